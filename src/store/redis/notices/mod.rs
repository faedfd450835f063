//! Near-cache notices over sharded pub/sub (Redis 7.0+), so a notice reaches every replica in one hop.
//!
//! Why not classic PUBLISH: a cluster forwards it to subscribers on other nodes over the cluster bus, which
//! measured here tens of milliseconds (p90 ~40 ms) against ~0.4 ms on the same node, and that is the window in
//! which another replica's near-cache answers a value already invalidated. Here every slot range of the slot map
//! has its own channel (`layout::notice_channel`, hash-tagged into the range's first slot, so it lives on the
//! range's primary); each replica keeps one subscriber connection per range on that primary, and a writer sends a
//! key's notice with SPUBLISH on the channel of the key's own range, through the same node client that just wrote
//! the key. The notice goes writer → primary → subscribers and never crosses the bus.
//!
//! Every range must be heard, so heartbeats go to every channel and are handed to the near-cache only once every
//! channel delivered them (the lowest beat heard on all channels). When the slot map's ranges change, the
//! subscriptions follow and the near-cache is told it may have missed notices (`Heard::Lost`): a publisher that
//! saw the new map first may have used a channel not yet subscribed.
//!
//! A strict member's acknowledgements go to their writer only, on the writer's own channel
//! (`layout::ack_channel`, on the primary of its hash tag's slot), which only that replica subscribes to
//! (`Notices::hear_acks`), followed through the slot map like the range channels. With N members a strict write
//! costs N − 1 acknowledgement messages, each delivered to one replica; on a channel every replica hears it cost
//! (N − 1) × N deliveries, and at 10 members on 2 cores that traffic overflowed subscriber buffers (see
//! `SUBSCRIBER_BUFFER`). The writer's own heartbeats go to its acknowledgement channel too, so it hears again
//! (and joins as a member) only once that channel delivers.

mod beats;
pub(super) mod wire;

use super::layout;
use super::nodes::Nodes;
use super::redirect;
use super::subscriber::{SubscriberConnection, subscriber_client};
use crate::store::contract::{Heard, Notice};
use crate::{Error, Result};
use beats::{Beats, lock};
use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface, ReconnectPolicy, Server};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use wire::{decode, delay, encode};

/// How often the subscriptions are compared with the slot map.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// A subscription that heard nothing for this long (heartbeats come every `near_cache.heartbeat_ms`) subscribes
/// again: a refused SSUBSCRIBE, or a channel the server unsubscribed us from when its slot moved, is not retried by
/// the client.
const SILENCE: Duration = Duration::from_secs(2);
/// Messages a subscriber connection buffers before its reader falls behind and they are dropped (fred's default
/// is 32). A drop is a lost notice (the near-cache flushes and, as a strict member, leaves) or a lost
/// acknowledgement (its writer revokes the member and waits out its lease): measured with 10 strict members on 2
/// cores, a reader descheduled for a few milliseconds overflowed 32.
const SUBSCRIBER_BUFFER: usize = 1024;

/// This replica's subscriptions to every range's notice channel (and to its own acknowledgement channel, once
/// asked), fanned out to local receivers.
pub(super) struct Notices {
    sender: broadcast::Sender<Heard>,
    /// The strict writer (this replica) whose acknowledgement channel is subscribed too, once known.
    acks_for: Arc<OnceLock<u64>>,
    /// Stops following the slot map (and drops every subscription) when the store is dropped.
    _stop: oneshot::Sender<()>,
}

impl Notices {
    /// Starts following `nodes`' slot map, subscribing to each range's channel on its primary; notices (and word of
    /// lost ones) go to `sender`. Subscriptions connect in the background: the near-cache starts deaf and hears once
    /// its own heartbeat has come back on every channel.
    pub(super) fn start(
        nodes: &Arc<Nodes>,
        sender: broadcast::Sender<Heard>,
        timeouts: (Duration, Duration),
    ) -> Notices {
        let (stop, stopped) = oneshot::channel();
        let acks_for = Arc::new(OnceLock::new());
        tokio::spawn(follow(
            Arc::downgrade(nodes),
            sender.clone(),
            acks_for.clone(),
            timeouts,
            stopped,
        ));
        Notices {
            sender,
            acks_for,
            _stop: stop,
        }
    }

    /// Notices from every replica, and word when some may have been missed.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Heard> {
        self.sender.subscribe()
    }

    /// Subscribes to `writer`'s acknowledgement channel as well (this replica writes strict notices as `writer`).
    /// One writer per store: a later call for another writer is ignored.
    pub(super) fn hear_acks(&self, writer: u64) {
        if self.acks_for.set(writer).is_err() && self.acks_for.get() != Some(&writer) {
            tracing::warn!(
                writer,
                "near-cache acknowledgements already heard for another writer"
            );
        }
    }

    /// Sends `notice` to every replica's near-cache: a key's notice on its range's channel (all of a range's keys
    /// in one message), a pattern on one channel, a heartbeat on every channel (and on this replica's
    /// acknowledgement channel when it hears one), acknowledgements on their writer's channel.
    pub(super) async fn publish(&self, nodes: &Nodes, notice: &Notice) -> Result<()> {
        let messages = route(nodes, notice, self.acks_for.get().copied())?;
        let sends = messages.into_iter().map(|(slot, channel, notice)| {
            let message = encode(&notice);
            async move {
                let (channel, message) = (&channel, &message);
                // The channel's slot may be moving: follow it to its new primary, whose subscribers hear it once
                // they follow the map (and meanwhile the near-caches were told they may have missed notices).
                redirect::in_slot(nodes, slot, |client| async move {
                    client
                        .spublish::<(), _, _>(channel.clone(), message.clone())
                        .await
                })
                .await
                .map(drop)
            }
        });
        futures::future::try_join_all(sends).await.map(drop)
    }
}

/// The messages that send `notice`: each with its channel's slot and the channel. `acks_for`: the writer whose
/// acknowledgement channel this replica hears (its heartbeats go there too).
fn route(
    nodes: &Nodes,
    notice: &Notice,
    acks_for: Option<u64>,
) -> Result<Vec<(u16, String, Notice)>> {
    let shards = nodes.shards();
    let range_of = |slot: u16| {
        shards
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(first, _, _)| *first)
            .ok_or_else(|| no_shard(slot))
    };
    let on_range = |first: u16, notice: Notice| (first, layout::notice_channel(first), notice);
    let mut messages = Vec::new();
    match notice {
        Notice::Keys(keys) => {
            let mut by_range: HashMap<u16, Vec<String>> = HashMap::new();
            for key in keys {
                let first = range_of(nodes.slot_of(layout::group(key)))?;
                by_range.entry(first).or_default().push(key.clone());
            }
            messages.extend(
                by_range
                    .into_iter()
                    .map(|(first, keys)| on_range(first, Notice::Keys(keys))),
            );
        }
        Notice::StrictKeys(_, keys) => {
            // One message, so a member acknowledges the whole write at once: every replica hears every channel,
            // so the first key's (on the node that just wrote it) reaches all of them in one hop.
            let slot = nodes.slot_of(layout::group(keys.first().map_or("", String::as_str)));
            messages.push(on_range(range_of(slot)?, notice.clone()));
        }
        Notice::Pattern(_) | Notice::StrictPattern(..) => {
            // Every replica hears every channel: any range whose primary takes commands will do.
            let first = shards
                .iter()
                .map(|(first, _, _)| *first)
                .find(|&first| nodes.for_slot(first).is_ok())
                .ok_or_else(|| no_shard(0))?;
            messages.push(on_range(first, notice.clone()));
        }
        Notice::Acks(acks) => {
            let channel = layout::ack_channel(acks.writer);
            messages.push((nodes.slot_of(&channel), channel, notice.clone()));
        }
        Notice::Heartbeat(replica, _) => {
            messages.extend(
                shards
                    .iter()
                    .map(|(first, _, _)| on_range(*first, notice.clone())),
            );
            if acks_for == Some(*replica) {
                let channel = layout::ack_channel(*replica);
                messages.push((nodes.slot_of(&channel), channel, notice.clone()));
            }
        }
    }
    Ok(messages)
}

fn no_shard(slot: u16) -> Error {
    Error::BackendUnavailable {
        source: format!("no Redis node serves slot {slot} for near-cache notices").into(),
    }
}

/// Keeps one subscription per range of the slot map until `stopped` fires or the nodes are gone.
async fn follow(
    nodes: Weak<Nodes>,
    sender: broadcast::Sender<Heard>,
    acks_for: Arc<OnceLock<u64>>,
    timeouts: (Duration, Duration),
    mut stopped: oneshot::Receiver<()>,
) {
    let beats = Arc::new(Mutex::new(Beats::default()));
    let mut shards: HashMap<String, SubscriberConnection> = HashMap::new();
    let mut first = true;
    loop {
        let Some(nodes) = nodes.upgrade() else {
            return;
        };
        let ranges = nodes.shards();
        let mut wanted: HashMap<String, Server> = ranges
            .iter()
            .map(|(first, _, server)| (layout::notice_channel(*first), server.clone()))
            .collect();
        // Only a change of the range channels can lose notices; the acknowledgement channel (subscribed once
        // asked, moved with its slot) can only lose acknowledgements, which cost a writer a wait, never coherence.
        let ack_channel = acks_for.get().map(|writer| layout::ack_channel(*writer));
        let ranges_unchanged = same(&wanted, &shards, ack_channel.as_deref());
        if let Some(channel) = ack_channel {
            let slot = nodes.slot_of(&channel);
            if let Some((_, _, server)) = ranges.iter().find(|(f, l, _)| (*f..=*l).contains(&slot))
            {
                wanted.insert(channel, server.clone());
            }
        }
        if !same(&wanted, &shards, None) && !wanted.is_empty() {
            shards.retain(|channel, shard| wanted.get(channel) == Some(&shard.server));
            lock(&beats).follow(wanted.keys().cloned().collect());
            for (channel, server) in &wanted {
                if !shards.contains_key(channel) {
                    let config = nodes.config_for(server);
                    match subscribe(config, channel, &sender, &beats, timeouts) {
                        Ok((client, tasks)) => {
                            let server = server.clone();
                            shards.insert(
                                channel.to_string(),
                                SubscriberConnection {
                                    server,
                                    client,
                                    tasks,
                                },
                            );
                        }
                        Err(error) => {
                            tracing::warn!(%error, channel, "no subscriber for near-cache notices")
                        }
                    }
                }
            }
            if !first && !ranges_unchanged {
                // A writer that saw the new map first may have used a channel we only subscribe to now.
                let _ = sender.send(Heard::Lost);
            }
            first = false;
        }
        drop(nodes);
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// Whether `shards` subscribes exactly `wanted`'s channels (leaving `except` out), each on its server.
fn same(
    wanted: &HashMap<String, Server>,
    shards: &HashMap<String, SubscriberConnection>,
    except: Option<&str>,
) -> bool {
    let subscribed = shards.keys().filter(|c| Some(c.as_str()) != except).count();
    subscribed == wanted.len()
        && wanted
            .iter()
            .all(|(channel, server)| shards.get(channel).is_some_and(|s| &s.server == server))
}

/// Connects a subscriber for `channel` with `config` (one server) and starts forwarding what it hears.
fn subscribe(
    config: fred::prelude::Config,
    channel: &str,
    sender: &broadcast::Sender<Heard>,
    beats: &Arc<Mutex<Beats>>,
    timeouts: (Duration, Duration),
) -> Result<(SubscriberClient, Vec<JoinHandle<()>>)> {
    let reconnect = ReconnectPolicy::new_exponential(0, 20, 500, 2);
    let client = subscriber_client(config, timeouts, reconnect, Some(SUBSCRIBER_BUFFER))?;
    let heard = Arc::new(AtomicBool::new(false));

    let mut messages = client.message_rx();
    let (forward, beats, heard_now) = (sender.clone(), beats.clone(), heard.clone());
    let forwarding = tokio::spawn(async move {
        loop {
            match messages.recv().await {
                Ok(message) => {
                    heard_now.store(true, Ordering::Relaxed);
                    let Some(text) = message.value.as_str() else {
                        continue;
                    };
                    let Some(notice) = decode(&text) else {
                        continue;
                    };
                    if let Some(delay) = delay(&text) {
                        let _ = forward.send(Heard::Delay(delay));
                    }
                    let heard = match notice {
                        Notice::Heartbeat(replica, beat) => lock(&beats)
                            .heard(&message.channel, replica, beat)
                            .map(|beat| Notice::Heartbeat(replica, beat)),
                        notice => Some(notice),
                    };
                    if let Some(notice) = heard {
                        let _ = forward.send(Heard::Notice(notice));
                    }
                }
                // Missed messages are missed notices: the near-cache must not trust itself.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = forward.send(Heard::Lost);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    // A connection that ends or errs may have dropped notices.
    let (lost, mut errors) = (sender.clone(), client.error_rx());
    let losing = tokio::spawn(async move {
        while let Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) = errors.recv().await {
            let _ = lost.send(Heard::Lost);
        }
    });
    let subscribing = tokio::spawn(keep_subscribed(client.clone(), channel.to_owned(), heard));
    Ok((client, vec![forwarding, losing, subscribing]))
}

/// Connects, subscribes, and subscribes again whenever the channel was silent for `SILENCE`.
async fn keep_subscribed(client: SubscriberClient, channel: String, heard: Arc<AtomicBool>) {
    client.connect();
    client.manage_subscriptions();
    let mut subscribed = false;
    loop {
        if client.wait_for_connect().await.is_ok()
            && (!subscribed || !heard.swap(false, Ordering::Relaxed))
        {
            match client.ssubscribe(channel.as_str()).await {
                Ok(()) => subscribed = true,
                Err(error) => tracing::debug!(%error, channel, "SSUBSCRIBE failed; trying again"),
            }
        }
        let wait = if subscribed {
            SILENCE
        } else {
            Duration::from_millis(100)
        };
        tokio::time::sleep(wait).await;
    }
}
