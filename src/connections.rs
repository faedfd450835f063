//! The connections the gRPC port hands to tonic: accepted TCP (options set by the caller's incoming stream), the
//! TLS handshake with the certificate in force, and the connection age limit's hard end.
//!
//! tonic sends GOAWAY once a connection reaches `connections.max_age_secs` (`Server::max_connection_age`), and
//! hyper then lets the streams in flight finish. What tonic 0.14 does *not* do is both: with its
//! `max_connection_age_grace` set it skips the GOAWAY and just drops the connection at age + grace, cutting every
//! call on it. So the grace is enforced here instead: a [`Connection`] fails its reads and writes once
//! age + grace have passed since it was handed to tonic (after its TLS handshake, when tonic's age timer starts
//! too), and hyper closes it (counted in
//! `cachecoord_grpc_connections_cut_total`, a sign that the grace is shorter than the calls).
//!
//! TLS handshakes run in tasks of their own (a slow client does not hold up the accept loop), each with the
//! configuration [`ServerTls::current`] holds when the connection arrives, within [`HANDSHAKE_TIMEOUT`].

use crate::api::{ConnectionInfo, Guarded};
use crate::tls::ServerTls;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// Longest a client may take to complete its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One accepted connection, plaintext or TLS, with the instant it must be closed by.
pub(crate) struct Connection {
    io: Io,
    /// When age + grace are over; `None` without an age limit.
    cutoff: Option<Pin<Box<Sleep>>>,
    cut: bool,
}

/// The stream under TLS (if any) is admission's [`Guarded`] TCP stream, so admission can cut it.
enum Io {
    Plain(Guarded),
    Tls(Box<TlsStream<Guarded>>),
}

/// The connections `incoming` brings, after their TLS handshake when `tls` is set, closed at the latest
/// age + grace after they were handed on when `age_limit` is set. The accept loop stops (and the listening socket
/// closes) when the returned stream is dropped.
pub(crate) fn accept<S>(
    incoming: S,
    tls: Option<Arc<ServerTls>>,
    age_limit: Option<(Duration, Duration)>,
) -> ReceiverStream<io::Result<Connection>>
where
    S: Stream<Item = io::Result<Guarded>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        let mut handshakes = JoinSet::new();
        loop {
            let io = tokio::select! {
                () = tx.closed() => return,
                accepted = incoming.next() => match accepted {
                    None => return,
                    // tonic decides which accept errors end serving.
                    Some(Err(error)) => Err(error),
                    Some(Ok(tcp)) => {
                        metrics::counter!("cachecoord_grpc_connections_accepted_total").increment(1);
                        match &tls {
                            None => Ok(Io::Plain(tcp)),
                            Some(tls) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                                handshakes.spawn(tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)));
                                continue;
                            }
                        }
                    }
                },
                Some(done) = handshakes.join_next() => match done {
                    Ok(Ok(Ok(stream))) => Ok(Io::Tls(Box::new(stream))),
                    Ok(Ok(Err(error))) => {
                        handshake_failed("refused", &error);
                        continue;
                    }
                    Ok(Err(_elapsed)) => {
                        handshake_failed("timeout", &"no handshake within the timeout");
                        continue;
                    }
                    Err(_cancelled) => continue,
                },
            };
            // The age counts from here, as tonic's timer for the GOAWAY does: a slow handshake eats no grace.
            let connection = io.map(|io| Connection::new(io, age_limit));
            if tx.send(connection).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

fn handshake_failed(reason: &'static str, error: &dyn std::fmt::Display) {
    metrics::counter!("cachecoord_tls_handshake_failures_total", "reason" => reason).increment(1);
    tracing::debug!(%error, reason, "TLS handshake failed");
}

impl Connection {
    fn new(io: Io, age_limit: Option<(Duration, Duration)>) -> Connection {
        metrics::gauge!("cachecoord_grpc_connections_open").increment(1.0);
        let cutoff = age_limit.map(|(age, grace)| Instant::now() + age + grace);
        Connection {
            io,
            cutoff: cutoff.map(|at| Box::pin(tokio::time::sleep_until(at))),
            cut: false,
        }
    }

    /// Whether the connection is past its age + grace (and, if not, arranges to be woken when it is). hyper
    /// always has a read pending on a live HTTP/2 connection, so the wake-up reaches it even when idle.
    fn past_cutoff(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.cut
            && let Some(cutoff) = &mut self.cutoff
            && cutoff.as_mut().poll(cx).is_ready()
        {
            self.cut = true;
            metrics::counter!("cachecoord_grpc_connections_cut_total").increment(1);
            tracing::debug!(
                "connection closed: calls still in flight after its maximum age and grace"
            );
        }
        self.cut
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "connection past its maximum age and grace",
    )
}

impl Drop for Connection {
    fn drop(&mut self) {
        metrics::gauge!("cachecoord_grpc_connections_open").decrement(1.0);
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        match &self.io {
            Io::Plain(tcp) => tcp.connect_info(),
            Io::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.past_cutoff(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.past_cutoff(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.past_cutoff(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
