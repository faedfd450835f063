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
//! Each connection's age limit is drawn uniformly within ±[`AGE_JITTER`] of `max_age_secs` ([`draw_age`]), so
//! clients that connected together (a fleet restarted at once) do not all reconnect in the same second. tonic
//! applies one age to every connection a `Server` serves, so [`serve`] hands each connection to a `Server` of
//! its own, built with that connection's age.
//!
//! TLS handshakes run in tasks of their own (a slow client does not hold up the accept loop), each with the
//! configuration [`ServerTls::current`] holds when the connection arrives, within [`HANDSHAKE_TIMEOUT`].

use crate::api::{ConnectionInfo, Guarded};
use crate::tls::ServerTls;
use rand::Rng;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// Longest a client may take to complete its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How far each connection's maximum age may be from `connections.max_age_secs`, as a fraction of it.
pub(crate) const AGE_JITTER: f64 = 0.1;

/// One connection's maximum age: uniform within ±[`AGE_JITTER`] of `age`.
pub(crate) fn draw_age(age: Duration, rng: &mut impl Rng) -> Duration {
    age.mul_f64(rng.random_range(1.0 - AGE_JITTER..=1.0 + AGE_JITTER))
}

/// One accepted connection, plaintext or TLS, with its maximum age and the instant it must be closed by.
pub(crate) struct Connection {
    io: Io,
    /// This connection's own maximum age (drawn); `None` without an age limit.
    max_age: Option<Duration>,
    /// Dropped with the connection: tells [`Connection::closed`]'s receiver it is gone.
    open: Option<oneshot::Sender<()>>,
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

/// Serves every connection `incoming` brings with `serve_one`, which serves one connection until the `stop`
/// future it is given resolves: at `drain`, or once that connection has closed. At `drain` the listening
/// socket closes (no new connections), every connection is asked to stop (GOAWAY) and this returns when they
/// all have closed.
pub(crate) async fn serve<F>(
    incoming: ReceiverStream<io::Result<Connection>>,
    drain: impl Future<Output = ()>,
    serve_one: impl Fn(Connection, Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
) where
    F: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    let (draining, drained) = watch::channel(false);
    let mut served = JoinSet::new();
    {
        let mut incoming = incoming;
        let mut drain = std::pin::pin!(drain);
        loop {
            tokio::select! {
                () = &mut drain => break,
                // Reap the servers of closed connections as they finish.
                Some(_) = served.join_next(), if !served.is_empty() => {}
                accepted = incoming.next() => match accepted {
                    None => break,
                    // As tonic's own accept loop: an accept error (a refused TLS handshake already left out)
                    // ends that connection, not serving.
                    Some(Err(error)) => tracing::debug!(%error, "accepting a connection failed"),
                    Some(Ok(mut connection)) => {
                        let closed = connection.closed();
                        let mut drained = drained.clone();
                        let stop = Box::pin(async move {
                            tokio::select! {
                                _ = drained.wait_for(|draining| *draining) => {}
                                _ = closed => {}
                            }
                        });
                        let serving = serve_one(connection, stop);
                        served.spawn(async move {
                            if let Err(error) = serving.await {
                                tracing::warn!(%error, "serving a connection failed");
                            }
                        });
                    }
                },
            }
        }
        // `incoming` is dropped here: the accept loop ends and the listening socket closes.
    }
    let _ = draining.send(true);
    while served.join_next().await.is_some() {}
}

fn handshake_failed(reason: &'static str, error: &dyn std::fmt::Display) {
    metrics::counter!("cachecoord_tls_handshake_failures_total", "reason" => reason).increment(1);
    tracing::debug!(%error, reason, "TLS handshake failed");
}

impl Connection {
    fn new(io: Io, age_limit: Option<(Duration, Duration)>) -> Connection {
        metrics::gauge!("cachecoord_grpc_connections_open").increment(1.0);
        let limit = age_limit.map(|(age, grace)| (draw_age(age, &mut rand::rng()), grace));
        let cutoff = limit.map(|(age, grace)| Instant::now() + age + grace);
        Connection {
            io,
            max_age: limit.map(|(age, _grace)| age),
            open: None,
            cutoff: cutoff.map(|at| Box::pin(tokio::time::sleep_until(at))),
            cut: false,
        }
    }

    /// This connection's maximum age (GOAWAY then), drawn when it was accepted; `None` without an age limit.
    pub(crate) fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    /// Resolves once the connection has been dropped (closed by either side).
    fn closed(&mut self) -> oneshot::Receiver<()> {
        let (open, closed) = oneshot::channel();
        self.open = Some(open);
        closed
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn each_connection_age_is_drawn_within_ten_percent_of_the_setting() {
        let age = Duration::from_secs(300);
        let mut rng = StdRng::seed_from_u64(15);
        let draws: Vec<Duration> = (0..10_000).map(|_| draw_age(age, &mut rng)).collect();
        let (low, high) = (Duration::from_secs(270), Duration::from_secs(330));
        assert!(
            draws.iter().all(|d| (low..=high).contains(d)),
            "a draw outside 270..=330 s"
        );
        // Spread over the whole range, not bunched: each tenth of it gets some of the draws (uniform: ~1000).
        for tenth in 0..10 {
            let from = low + (high - low) * tenth / 10;
            let to = from + (high - low) / 10;
            let count = draws.iter().filter(|&&d| (from..to).contains(&d)).count();
            assert!(count > 500, "{count} draws in {from:?}..{to:?}");
        }
    }
}
