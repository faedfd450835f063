//! Redis classic pub/sub: the channel announcing filled and released leases, and the classic channel of
//! near-cache notices, still heard so replicas of earlier versions (which publish there) are heard during a
//! rolling upgrade. Notices are sent on sharded channels (`notices`).
//!
//! A cluster delivers a classic PUBLISH to subscribers on every node, so one subscriber connection to one primary
//! of the slot map hears it all. It is a fred subscriber client of its own (resubscribing after reconnects): a
//! stall there delays lease events, never data commands. When its primary leaves the slot map (failed over,
//! emptied and removed), the subscription moves to a current primary and the old connection is closed: a
//! cluster-aware subscriber would instead keep a connection for reading the cluster map on whichever node it
//! first reached, a removed one included, for as long as it runs. Publishing goes through any connected
//! primary's client.

use super::errors::backend_error;
use super::nodes::Nodes;
use super::notices::wire::decode;
use super::subscriber::{SubscriberConnection, subscriber_client};
use crate::store::contract::Heard;
use crate::{Error, Result};
use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface, ReconnectPolicy, Server};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

/// Channel on which every replica announces filled and released leases.
const LEASE_CHANNEL: &str = "cachecoord:lease-events";
/// The classic channel earlier versions sent near-cache notices on.
const NOTICE_CHANNEL: &str = "cachecoord:notices";
/// Messages buffered for slow local subscribers before the oldest are dropped (lease waiters also poll; the
/// near-cache hears that it lost notices).
const EVENT_BUFFER: usize = 4096;
/// How often the subscriber's primary is looked for in the slot map.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// This replica's subscription to both channels, fanned out to local receivers.
pub(super) struct Subscription {
    events: broadcast::Sender<Arc<str>>,
    /// Stops following the slot map (and closes the subscriber) when the store is dropped.
    _stop: oneshot::Sender<()>,
}

impl Subscription {
    /// Subscribes to both channels on a primary of `nodes`' slot map, waiting up to `connect_timeout`; notices
    /// heard go to `notices`. The subscription then follows the slot map.
    pub(super) async fn connect(
        nodes: &Arc<Nodes>,
        notices: broadcast::Sender<Heard>,
        (connect_timeout, command_timeout): (Duration, Duration),
    ) -> Result<Subscription> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let listen = Listen {
            events: events.clone(),
            notices,
            timeouts: (connect_timeout, command_timeout),
        };
        let server = nodes
            .primaries()
            .first()
            .map(|node| node.server.clone())
            .ok_or_else(|| Error::BackendUnavailable {
                source: "no Redis primary to subscribe to".into(),
            })?;
        let listener = tokio::time::timeout(connect_timeout, listen.on(nodes, server))
            .await
            .map_err(|elapsed| Error::BackendUnavailable {
                source: format!("no pub/sub connection to Redis after {elapsed}").into(),
            })??;
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(follow(Arc::downgrade(nodes), listen, listener, stopped));
        Ok(Subscription {
            events,
            _stop: stop,
        })
    }

    /// Keys whose lease was just filled or released, on any replica.
    pub(super) fn lease_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }
}

/// Where what a subscriber hears goes, and how it connects.
struct Listen {
    events: broadcast::Sender<Arc<str>>,
    notices: broadcast::Sender<Heard>,
    timeouts: (Duration, Duration),
}

impl Listen {
    /// Connects a subscriber to `server` and subscribes to both channels.
    async fn on(&self, nodes: &Nodes, server: Server) -> Result<SubscriberConnection> {
        let reconnect = ReconnectPolicy::new_exponential(0, 50, 1_000, 2);
        let client = subscriber_client(nodes.config_for(&server), self.timeouts, reconnect, None)?;
        let mut listener = SubscriberConnection {
            server,
            client: client.clone(),
            tasks: Vec::new(),
        };
        client.init().await.map_err(backend_error)?;
        client.manage_subscriptions();
        client
            .subscribe(vec![LEASE_CHANNEL, NOTICE_CHANNEL])
            .await
            .map_err(backend_error)?;

        let (forward_events, forward_notices) = (self.events.clone(), self.notices.clone());
        let mut messages = client.message_rx();
        let heard = Arc::new(AtomicBool::new(true));
        let heard_now = heard.clone();
        listener.tasks.push(tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        heard_now.store(true, Ordering::Relaxed);
                        let Some(text) = message.value.as_str() else {
                            continue;
                        };
                        if &*message.channel == LEASE_CHANNEL {
                            let _ = forward_events.send(Arc::from(&*text));
                        } else if let Some(notice) = decode(&text) {
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
        }));
        // A subscriber connection that ends (or errs) may have dropped notices.
        let lost = self.notices.clone();
        let mut errors = client.error_rx();
        listener.tasks.push(tokio::spawn(async move {
            while let Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) = errors.recv().await {
                let _ = lost.send(Heard::Lost);
            }
        }));
        listener
            .tasks
            .push(tokio::spawn(resubscribe_when_silent(client, heard)));
        Ok(listener)
    }
}

/// Keeps the subscription on a primary of the slot map: when `listener`'s node is no longer one, subscribes on a
/// connected primary, then closes the old connection. Ends when `stopped` fires or the nodes are gone.
async fn follow(
    nodes: Weak<Nodes>,
    listen: Listen,
    mut listener: SubscriberConnection,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        let Some(nodes) = nodes.upgrade() else {
            return;
        };
        let primaries = nodes.primaries();
        if primaries.is_empty() || primaries.iter().any(|p| p.server == listener.server) {
            continue;
        }
        let Some(next) = primaries.iter().find(|p| p.client.is_connected()) else {
            continue;
        };
        let (connect_timeout, _) = listen.timeouts;
        match tokio::time::timeout(connect_timeout, listen.on(&nodes, next.server.clone())).await {
            Ok(Ok(moved)) => {
                tracing::info!(from = %listener.server, to = %moved.server, "pub/sub subscription moved to a current primary");
                listener = moved;
                // Messages sent while the subscription moved are lost.
                let _ = listen.notices.send(Heard::Lost);
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "pub/sub subscription not moved; trying again")
            }
            Err(_) => tracing::debug!("pub/sub subscription not moved in time; trying again"),
        }
    }
}

/// Subscribes again whenever nothing was heard for `SILENCE`. fred re-subscribes after a reconnect, but a
/// SUBSCRIBE that failed (the server refused it: an ACL without the channels, a node loading) is not retried, and
/// the replica would stay deaf for good: its lease waiters only polling. A spare SUBSCRIBE of channels already
/// subscribed costs one round trip.
async fn resubscribe_when_silent(subscriber: SubscriberClient, heard: Arc<AtomicBool>) {
    const SILENCE: Duration = Duration::from_secs(2);
    loop {
        tokio::time::sleep(SILENCE).await;
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
pub(super) async fn announce_lease(nodes: Arc<Nodes>, key: String) {
    let published = match nodes.any() {
        Ok(node) => node
            .client
            .publish::<(), _, _>(LEASE_CHANNEL, key.as_str())
            .await
            .map_err(backend_error),
        Err(error) => Err(error),
    };
    if let Err(error) = published {
        tracing::debug!(%error, %key, "could not announce a lease event");
    }
}
