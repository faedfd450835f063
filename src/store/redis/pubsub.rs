//! Redis pub/sub: the channel announcing filled and released leases, and the channel carrying near-cache notices,
//! with the notices' wire format.
//!
//! Subscriptions keep fred's own subscriber client (cluster-aware, resubscribing after reconnects): a stall there
//! delays notices, which the near-cache detects by its heartbeat, never data commands. Publishing goes through any
//! connected primary's client, since a cluster broadcasts classic PUBLISH from any node.

use super::errors::backend_error;
use super::nodes::Nodes;
use crate::store::contract::{Heard, Notice};
use crate::{Error, Result};
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config as FredConfig, EventInterface, PubsubInterface, ReconnectPolicy,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;

/// Channel on which every replica announces filled and released leases.
const LEASE_CHANNEL: &str = "cachecoord:lease-events";
/// Channel carrying near-cache notices (invalidated keys and patterns, heartbeats).
const NOTICE_CHANNEL: &str = "cachecoord:notices";
/// Messages buffered for slow local subscribers before the oldest are dropped (lease waiters also poll; the
/// near-cache hears that it lost notices).
const EVENT_BUFFER: usize = 4096;

/// This replica's subscription to both channels, fanned out to local receivers.
pub(super) struct Subscription {
    /// Kept so its connection (and the task forwarding its messages) lives as long as the store.
    _subscriber: SubscriberClient,
    events: broadcast::Sender<Arc<str>>,
    notices: broadcast::Sender<Heard>,
    /// Stops the resubscribing watchdog when the store is dropped.
    _watchdog: tokio::sync::oneshot::Sender<()>,
}

impl Subscription {
    /// Subscribes to both channels of the deployment `fred_config` describes, waiting up to `connect_timeout`.
    pub(super) async fn connect(
        fred_config: FredConfig,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Subscription> {
        let mut builder = Builder::from_config(fred_config);
        builder
            .with_connection_config(|conn| {
                conn.connection_timeout = connect_timeout;
                conn.internal_command_timeout = command_timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2));
        let subscriber = builder.build_subscriber_client().map_err(backend_error)?;
        let connecting = async {
            subscriber.init().await?;
            subscriber.manage_subscriptions();
            subscriber
                .subscribe(vec![LEASE_CHANNEL, NOTICE_CHANNEL])
                .await
        };
        tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|elapsed| Error::BackendUnavailable {
                source: format!("no pub/sub connection to Redis after {elapsed}").into(),
            })?
            .map_err(backend_error)?;

        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (notices, _) = broadcast::channel(EVENT_BUFFER);
        let (forward_events, forward_notices) = (events.clone(), notices.clone());
        let mut messages = subscriber.message_rx();
        let heard = Arc::new(AtomicBool::new(true));
        let heard_now = heard.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        heard_now.store(true, Ordering::Relaxed);
                        let Some(text) = message.value.as_str() else {
                            continue;
                        };
                        if &*message.channel == LEASE_CHANNEL {
                            let _ = forward_events.send(Arc::from(&*text));
                        } else if let Some(notice) = decode_notice(&text) {
                            let _ = forward_notices.send(Heard::Notice(notice));
                        }
                    }
                    // Missed messages are missed notices: the near-cache must not trust itself.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = forward_notices.send(Heard::Lost);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        // A subscriber connection that ends (or errs) may have dropped notices.
        let lost = notices.clone();
        let mut errors = subscriber.error_rx();
        tokio::spawn(async move {
            while let Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) = errors.recv().await {
                let _ = lost.send(Heard::Lost);
            }
        });
        let (watchdog, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(resubscribe_when_silent(subscriber.clone(), heard, stopped));
        Ok(Subscription {
            _subscriber: subscriber,
            events,
            notices,
            _watchdog: watchdog,
        })
    }

    /// Keys whose lease was just filled or released, on any replica.
    pub(super) fn lease_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// Notices from every replica, and word when the subscription is lost.
    pub(super) fn notices(&self) -> broadcast::Receiver<Heard> {
        self.notices.subscribe()
    }
}

/// Subscribes again whenever nothing was heard for `SILENCE`. fred re-subscribes after a reconnect, but a
/// SUBSCRIBE that failed (the server refused it: an ACL without the channels, a node loading) is not retried, and
/// the replica would stay deaf for good: its near-cache serving nothing, its lease waiters only polling. With the
/// near-cache on, heartbeats arrive every `heartbeat_ms`, so silence means trouble; without it, a spare SUBSCRIBE
/// of channels already subscribed costs one round trip.
async fn resubscribe_when_silent(
    subscriber: SubscriberClient,
    heard: Arc<AtomicBool>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    const SILENCE: Duration = Duration::from_secs(2);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(SILENCE) => {}
        }
        if heard.swap(false, Ordering::Relaxed) || !subscriber.is_connected() {
            continue;
        }
        if let Err(error) = subscriber
            .subscribe(vec![LEASE_CHANNEL, NOTICE_CHANNEL])
            .await
        {
            tracing::debug!(%error, "re-subscribing to the notice channels failed; trying again");
        }
    }
}

/// Announces that `key`'s lease was filled or released. Best effort: waiters poll as well, so a lost
/// announcement only costs them a poll interval.
pub(super) async fn announce_lease(nodes: &Nodes, key: &str) {
    let published = match nodes.any() {
        Ok(node) => node
            .client
            .publish::<(), _, _>(LEASE_CHANNEL, key)
            .await
            .map_err(backend_error),
        Err(error) => Err(error),
    };
    if let Err(error) = published {
        tracing::debug!(%error, key, "could not announce a lease event");
    }
}

/// Sends `notice` to every replica's near-cache.
pub(super) async fn publish_notice(nodes: &Nodes, notice: &Notice) -> Result<()> {
    let node = nodes.any()?;
    let published = node
        .client
        .publish::<(), _, _>(NOTICE_CHANNEL, encode_notice(notice))
        .await;
    nodes.observe(&node, published)
}

/// Notices on the wire: a tag line, then one item per line (keys and patterns hold no whitespace).
fn encode_notice(notice: &Notice) -> String {
    match notice {
        Notice::Keys(keys) => format!("k\n{}", keys.join("\n")),
        Notice::Pattern(pattern) => format!("p\n{pattern}"),
        Notice::Heartbeat(replica, seq) => format!("h\n{replica}\n{seq}"),
    }
}

fn decode_notice(text: &str) -> Option<Notice> {
    let mut lines = text.split('\n');
    match lines.next()? {
        "k" => Some(Notice::Keys(lines.map(str::to_owned).collect())),
        "p" => Some(Notice::Pattern(lines.next()?.to_owned())),
        "h" => Some(Notice::Heartbeat(
            lines.next()?.parse().ok()?,
            lines.next()?.parse().ok()?,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_survive_the_wire() {
        for notice in [
            Notice::Keys(vec!["user:1".into(), "user:2:posts".into()]),
            Notice::Pattern("user:1:*".into()),
            Notice::Heartbeat(7, 42),
        ] {
            assert_eq!(decode_notice(&encode_notice(&notice)), Some(notice));
        }
        assert_eq!(decode_notice("x\nwhat"), None);
    }
}
