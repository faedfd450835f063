//! Reads: one MGET per hash slot, fetching the values and the epochs of their groups together (same slot by
//! construction), so a batch costs about one round trip per primary and a record is served only while its
//! group's epoch stands.

use super::layout;
use super::nodes::{Nodes, all};
use super::record;
use crate::keys::Key;
use crate::{Error, Result};
use bytes::Bytes;
use fred::prelude::KeysInterface;

/// Reads `keys`: one payload per key, in order, `None` for a missing, expired or voided one.
pub(super) async fn get_many(nodes: &Nodes, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
    let slots = nodes.by_slot(keys.iter().map(|key| layout::group(key.as_str())));
    let reads = slots.into_iter().map(|(slot, indices)| async move {
        let node = nodes.for_slot(slot)?;
        let mut groups: Vec<&str> = indices
            .iter()
            .map(|&i| layout::group(keys[i].as_str()))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let mut redis_keys: Vec<String> = indices
            .iter()
            .map(|&i| layout::value_key(keys[i].as_str()))
            .collect();
        redis_keys.extend(groups.iter().map(|group| layout::epoch_key(group)));
        let values = node.client.mget::<Vec<Option<Bytes>>, _>(redis_keys).await;
        let mut values = nodes.observe(&node, values)?;
        let epochs = values.split_off(indices.len());
        let epoch_of = |group: &str| {
            groups
                .binary_search(&group)
                .ok()
                .and_then(|at| epochs[at].as_ref())
        };
        let payloads: Vec<Option<Bytes>> = indices
            .iter()
            .zip(values)
            .map(|(&i, stored)| {
                let epoch = epoch_of(layout::group(keys[i].as_str()))?;
                record::payload(&stored?, epoch)
            })
            .collect();
        Ok::<_, Error>((indices, payloads))
    });
    let mut answers = vec![None; keys.len()];
    for (indices, payloads) in all(reads).await? {
        for (index, payload) in indices.into_iter().zip(payloads) {
            answers[index] = payload;
        }
    }
    Ok(answers)
}
