//! Connections the replica can cut, and that hand out response bytes only as fast as their socket takes them.
//!
//! A response body is held by HTTP/2 until the peer's flow-control window lets it out: a peer that never reads
//! (never sends WINDOW_UPDATE) would hold it, and its call's slot and bytes, for as long as the connection lives,
//! and answering keepalive pings keeps it alive. Nothing polls a stalled response, so it cannot time itself out;
//! instead every accepted connection is wrapped ([`Guarded`]) and a sweeper closes any connection with a response
//! that has made no progress for longer than `limits.response_send_timeout_ms`. Closing the connection drops every
//! stream on it, and with them every slot and byte they held.
//!
//! A peer that opens huge windows but stops reading its socket would let HTTP/2 take whole answers into its own
//! send buffers (up to 400 KiB a stream), where no budget sees them. So response bodies hand their chunks out only
//! while the connection's bytes handed out but not yet written to the socket stay under [`UNWRITTEN_CAP`]
//! ([`Connection::may_hand`]); a body held back makes no progress, and the sweeper cuts its connection in time.

use futures::task::AtomicWaker;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::server::Connected;

use super::budget::Share;

/// Response bytes one connection may have handed to HTTP/2 beyond what its socket has taken.
pub(super) const UNWRITTEN_CAP: u64 = 256 * 1024;

/// One accepted connection, as the admission layer and the sweeper see it.
#[derive(Debug)]
pub(super) struct Connection {
    /// The share of this connection's calls when auth is off (the peer's address is the caller then).
    pub(super) share: Arc<Share>,
    cut: AtomicBool,
    /// Woken to make the connection notice it was cut.
    waker: AtomicWaker,
    /// When each unsent response of this connection last made progress, by a per-connection number.
    unsent: Mutex<HashMap<u64, Instant>>,
    next: AtomicU64,
    /// Response bytes handed to HTTP/2, and bytes the socket has taken (framing and other frames included).
    handed: AtomicU64,
    written: AtomicU64,
    /// Response bodies waiting for the socket to take more.
    held_back: Mutex<Vec<Waker>>,
    any_held_back: AtomicBool,
}

impl Connection {
    /// Notes a response ready to send; dropping the returned guard says it has been sent (or abandoned).
    pub(super) fn sending(self: &Arc<Self>) -> Sending {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Instant::now());
        Sending {
            connection: self.clone(),
            id,
        }
    }

    /// Whether a response body may hand out its next chunk now; if not, `cx` is woken when the socket has taken
    /// more.
    pub(super) fn may_hand(&self, cx: &Context<'_>) -> bool {
        let ahead = |c: &Connection| {
            c.handed
                .load(Ordering::Acquire)
                .saturating_sub(c.written.load(Ordering::Acquire))
        };
        if ahead(self) < UNWRITTEN_CAP {
            return true;
        }
        self.held_back
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cx.waker().clone());
        self.any_held_back.store(true, Ordering::Release);
        // The socket may have taken bytes between the check and the registration.
        ahead(self) < UNWRITTEN_CAP
    }

    /// Counts `bytes` handed to HTTP/2.
    pub(super) fn handed(&self, bytes: usize) {
        self.handed.fetch_add(bytes as u64, Ordering::AcqRel);
    }

    fn written(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Ordering::AcqRel);
        if self.any_held_back.swap(false, Ordering::AcqRel) {
            let waiting =
                std::mem::take(&mut *self.held_back.lock().unwrap_or_else(|e| e.into_inner()));
            waiting.into_iter().for_each(Waker::wake);
        }
    }

    fn oldest_unsent(&self) -> Option<Instant> {
        self.lock().values().min().copied()
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A response not yet sent in full; see [`Connection::sending`].
pub(super) struct Sending {
    connection: Arc<Connection>,
    id: u64,
}

impl Sending {
    /// The response handed out a chunk: its time without progress starts again.
    pub(super) fn progressed(&self) {
        if let Some(at) = self.connection.lock().get_mut(&self.id) {
            *at = Instant::now();
        }
    }

    /// The connection the response goes out on.
    pub(super) fn connection(&self) -> &Connection {
        &self.connection
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.connection.lock().remove(&self.id);
    }
}

/// Every live connection, for the sweeper.
#[derive(Default)]
pub(crate) struct Connections {
    live: Mutex<Vec<Weak<Connection>>>,
}

impl Connections {
    /// Wraps an accepted stream; its calls draw on `share` when auth is off.
    pub(super) fn accept(&self, stream: TcpStream, share: Arc<Share>) -> Guarded {
        let connection = Arc::new(Connection {
            share,
            cut: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            unsent: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            held_back: Mutex::new(Vec::new()),
            any_held_back: AtomicBool::new(false),
        });
        // Closed connections are pruned by the sweeper, not here: accepting stays O(1).
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&connection));
        Guarded { stream, connection }
    }

    /// Cuts, every `timeout / 4` (at least every second), each connection holding a response that has made no
    /// progress for longer than `timeout`; until `stop`.
    pub(crate) async fn sweep(self: Arc<Self>, timeout: Duration, mut stop: watch::Receiver<bool>) {
        let every = (timeout / 4).min(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let live: Vec<Arc<Connection>> = {
                let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
                live.retain(|c| c.strong_count() > 0);
                live.iter().filter_map(Weak::upgrade).collect()
            };
            for connection in live {
                if connection
                    .oldest_unsent()
                    .is_some_and(|ready| ready.elapsed() > timeout)
                {
                    metrics::counter!("cachecoord_connections_cut_total", "reason" => "response_unsent")
                        .increment(1);
                    tracing::warn!(
                        ?timeout,
                        "closing a connection whose peer has not read a response in time"
                    );
                    // Bodies held back for the socket wake to see the connection gone.
                    connection.written(0);
                    connection.cut();
                }
            }
        }
    }
}

/// An accepted TCP stream that fails every read and write once its connection is cut, which makes the HTTP/2
/// server drop the connection and all its streams.
pub(crate) struct Guarded {
    stream: TcpStream,
    connection: Arc<Connection>,
}

impl Guarded {
    fn check(&self, cx: &mut Context<'_>) -> io::Result<()> {
        self.connection.waker.register(cx.waker());
        if self.connection.cut.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "a response went unread for too long",
            ));
        }
        Ok(())
    }
}

/// What the admission layer finds in each request's extensions.
#[derive(Clone)]
pub(crate) struct ConnectionInfo {
    /// The accepted connection.
    pub(super) connection: Arc<Connection>,
}

impl Connected for Guarded {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            connection: self.connection.clone(),
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(bytes)) = written {
            self.connection.written(bytes);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(bytes)) = written {
            self.connection.written(bytes);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
