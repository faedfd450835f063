//! Free loopback ports.

use std::net::TcpListener;
use std::sync::Mutex;

/// Ports handed out in this process, so two servers started at once never get the same one.
static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A free port `p` such that `p + offset` is free too (Redis Cluster's bus listens on port + 10000).
pub fn free_port_with_offset(offset: u16) -> u16 {
    let mut taken = TAKEN.lock().unwrap();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let Some(paired) = port.checked_add(offset) else {
            continue;
        };
        if taken.contains(&port)
            || (offset > 0 && TcpListener::bind(("127.0.0.1", paired)).is_err())
        {
            continue;
        }
        taken.push(port);
        return port;
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    free_port_with_offset(0)
}
