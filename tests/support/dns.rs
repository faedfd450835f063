//! A DNS server on loopback that the test controls: it answers A queries for one name with the addresses it is
//! told, like a headless Kubernetes Service listing its ready pods, and NXDOMAIN for every other name. UDP only,
//! TTL 0, one question per query: what a gRPC client's resolver (c-ares) asks.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

/// A running DNS server; it stops when dropped.
pub struct TestDns {
    /// Where it answers (UDP).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    name: String,
    addresses: Vec<Ipv4Addr>,
    /// How many A queries for the name were answered.
    queries: usize,
}

impl TestDns {
    /// Starts a server on 127.0.0.1 answering A queries for `name` with `addresses`.
    pub async fn start(name: &str, addresses: &[Ipv4Addr]) -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            name: name.to_ascii_lowercase(),
            addresses: addresses.to_vec(),
            queries: 0,
        }));
        let answering = state.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let reply = answer(&buf[..len], &mut answering.lock().unwrap());
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        TestDns { addr, state, task }
    }

    /// From now on, answers with `addresses`.
    pub fn set(&self, addresses: &[Ipv4Addr]) {
        self.state.lock().unwrap().addresses = addresses.to_vec();
    }

    /// How many A queries for the name it has answered.
    pub fn queries(&self) -> usize {
        self.state.lock().unwrap().queries
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to `query`; `None` for what is not a one-question query.
fn answer(query: &[u8], state: &mut State) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    if header[2] & 0x80 != 0 || u16::from_be_bytes([header[4], header[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root label, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + len)?).to_ascii_lowercase());
        at += 1 + len;
    }
    let end = at + 5;
    let question = query.get(12..end)?;
    let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
    let ours = labels.join(".") == state.name;
    let mut records = Vec::new();
    if ours && qtype == 1 {
        state.queries += 1;
        for address in &state.addresses {
            // A pointer to the question's name, type A, class IN, TTL 0, four bytes of address.
            records.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            records.extend_from_slice(&address.octets());
        }
    }
    let count = if ours && qtype == 1 {
        state.addresses.len()
    } else {
        0
    };
    // Response, recursion desired and available; NXDOMAIN for other names, an empty answer for other types.
    let rcode = if ours { 0 } else { 3 };
    let mut reply = Vec::with_capacity(12 + question.len() + records.len());
    reply.extend_from_slice(&header[..2]);
    reply.extend_from_slice(&[0x80 | (header[2] & 0x01), 0x80 | rcode]);
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&(count as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    reply.extend_from_slice(&records);
    Some(reply)
}
