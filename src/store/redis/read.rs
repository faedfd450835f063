//! Reads: one MGET per hash slot, fetching the values and the epochs of their groups together (same slot by
//! construction), so a record is served only while its group's epoch stands. The MGETs of every slot a primary
//! serves go to it as one pipeline (one write, one answer to wait for), all primaries at once: a batch costs one
//! round trip per primary.
//!
//! While slots move, a primary answers the MGET of a slot it no longer serves (or whose keys are leaving it) with
//! `MOVED`, `ASK` or `TRYAGAIN` instead of values. Each answer in the pipeline is taken on its own: those slots
//! are read again through `redirect::in_slot`, which follows the redirection, so a key is only ever answered by
//! the node that holds it, and one moving slot neither fails the batch nor counts against the node's breaker.

use super::layout;
use super::node::Node;
use super::nodes::{Nodes, all};
use super::record;
use super::redirect;
use crate::keys::Key;
use crate::{Error, Result};
use bytes::Bytes;
use fred::prelude::{Error as FredError, KeysInterface};
use fred::types::Value;

/// Reads `keys`: one payload per key, in order, `None` for a missing, expired or voided one.
pub(super) async fn get_many(nodes: &Nodes, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
    let slots = nodes.by_slot(keys.iter().map(|key| layout::group(key.as_str())));
    let reads = nodes
        .by_node(slots)
        .into_iter()
        .map(|(node, slots)| async move {
            let node = nodes.admit(node, slots[0].0)?;
            let reads: Vec<SlotRead<'_>> = slots
                .into_iter()
                .map(|(slot, indices)| SlotRead::new(keys, slot, indices))
                .collect();
            let answers = send(&node, keys, &reads).await;
            let answers = nodes.observe(&node, answers)?;
            if answers.len() != reads.len() {
                return Err(Error::Backend {
                    source: format!("{} answers to {} reads", answers.len(), reads.len()).into(),
                });
            }
            let mut done = Vec::with_capacity(reads.len());
            let mut redirected = Vec::new();
            for (read, answer) in reads.into_iter().zip(answers) {
                match answer {
                    Err(error) if redirect::redirect_of(&error, &node.server).is_some() => {
                        // An answer, not a failure: the slot is read again where it went.
                        nodes.answered(&node);
                        redirected.push(read);
                    }
                    answer => {
                        let values = nodes.observe(&node, answer)?;
                        done.push(read.payloads(keys, values));
                    }
                }
            }
            for payloads in all(redirected.into_iter().map(|read| read.follow(nodes, keys))).await?
            {
                done.push(payloads);
            }
            Ok::<_, Error>(done)
        });
    let mut answers = vec![None; keys.len()];
    for (indices, payloads) in all(reads).await?.into_iter().flatten() {
        for (index, payload) in indices.into_iter().zip(payloads) {
            answers[index] = payload;
        }
    }
    Ok(answers)
}

/// Sends `reads` to `node`: one answer per read, in order, or the error that kept the node from answering.
async fn send(
    node: &Node,
    keys: &[Key],
    reads: &[SlotRead<'_>],
) -> Result<Vec<Result<Vec<Option<Bytes>>, FredError>>, FredError> {
    if let [only] = reads {
        // One slot (every single-key read): a plain MGET, without a pipeline's bookkeeping.
        let values = node.client.mget(only.redis_keys(keys)).await;
        return match values {
            Err(error) if redirect::redirect_of(&error, &node.server).is_none() => Err(error),
            values => Ok(vec![values]),
        };
    }
    let pipeline = node.client.pipeline();
    for read in reads {
        // Queued in memory: nothing is sent until `try_all`.
        let _: () = pipeline.mget(read.redis_keys(keys)).await?;
    }
    // Each answer on its own (`all` would end at the first error, a redirection included).
    let mut answers = pipeline.try_all::<Value>().await;
    if answers.len() != reads.len() {
        // The pipeline was not answered at all (a broken connection, a timeout): fred gives that one error.
        if let Some(Err(error)) = answers.pop() {
            return Err(error);
        }
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.and_then(Value::convert))
        .collect())
}

/// The MGET of one slot: the values of some of the keys, then the epochs of their groups.
struct SlotRead<'k> {
    slot: u16,
    /// Where the keys sit in the caller's list.
    indices: Vec<usize>,
    /// Their groups, sorted, each once.
    groups: Vec<&'k str>,
}

impl<'k> SlotRead<'k> {
    fn new(keys: &'k [Key], slot: u16, indices: Vec<usize>) -> SlotRead<'k> {
        let mut groups: Vec<&str> = indices
            .iter()
            .map(|&i| layout::group(keys[i].as_str()))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        SlotRead {
            slot,
            indices,
            groups,
        }
    }

    /// What the MGET reads: each key's value, then each group's epoch (taken when the MGET is sent).
    fn redis_keys(&self, keys: &[Key]) -> Vec<String> {
        let mut redis_keys = Vec::with_capacity(self.indices.len() + self.groups.len());
        redis_keys.extend(
            self.indices
                .iter()
                .map(|&i| layout::value_key(keys[i].as_str())),
        );
        redis_keys.extend(self.groups.iter().map(|group| layout::epoch_key(group)));
        redis_keys
    }

    /// Reads the slot again through the redirections its primary answered with.
    async fn follow(self, nodes: &Nodes, keys: &[Key]) -> Result<(Vec<usize>, Vec<Option<Bytes>>)> {
        let redis_keys = &self.redis_keys(keys);
        let (values, _) = redirect::in_slot(nodes, self.slot, |client| async move {
            client
                .mget::<Vec<Option<Bytes>>, _>(redis_keys.clone())
                .await
        })
        .await?;
        Ok(self.payloads(keys, values))
    }

    /// The payloads `values` (the MGET's answer) hold for the keys: those whose record carries its group's epoch.
    fn payloads(
        self,
        keys: &[Key],
        mut values: Vec<Option<Bytes>>,
    ) -> (Vec<usize>, Vec<Option<Bytes>>) {
        let epochs = values.split_off(self.indices.len().min(values.len()));
        let epoch_of = |group: &str| {
            self.groups
                .binary_search(&group)
                .ok()
                .and_then(|at| epochs.get(at)?.as_ref())
        };
        let payloads = self
            .indices
            .iter()
            .zip(values)
            .map(|(&i, stored)| {
                let epoch = epoch_of(layout::group(keys[i].as_str()))?;
                record::payload(&stored?, epoch)
            })
            .collect();
        (self.indices, payloads)
    }
}
