//! Per-entity answer counters: what the `Stats` RPC reports and what the Prometheus metrics show, counted at the
//! same place so the two always agree. The entity is the policy that governs the key (a bounded set, from the
//! configuration), so a caller inventing entities cannot blow up the metric cardinality.

use super::types::Source;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One entity's counters, as reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityStats {
    /// The policy name.
    pub entity: String,
    /// Answers per source, in the order of [`EntityStats::by_source`].
    pub counts: [u64; 8],
}

impl EntityStats {
    /// Every source with its count.
    pub fn by_source(&self) -> impl Iterator<Item = (Source, u64)> + '_ {
        Source::ALL.iter().copied().zip(self.counts.iter().copied())
    }

    /// How many answers came from `source`.
    pub fn count(&self, source: Source) -> u64 {
        self.counts[source.index()]
    }

    /// Hits over all answers (0 when there were none).
    pub fn hit_ratio(&self) -> f64 {
        let total: u64 = self.counts.iter().sum();
        let hits: u64 = self
            .by_source()
            .filter(|(s, _)| s.is_hit())
            .map(|(_, n)| n)
            .sum();
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }
}

#[derive(Default)]
struct Counters([AtomicU64; 8]);

/// The counters of every entity seen so far.
#[derive(Default)]
pub(crate) struct Stats {
    by_entity: RwLock<HashMap<String, Arc<Counters>>>,
}

impl Stats {
    /// Counts one answer for `entity`, and mirrors it to the metrics (counter and hit-ratio gauge).
    pub(crate) fn record(&self, entity: &str, source: Source) {
        let counters = self.counters(entity);
        counters.0[source.index()].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cachecoord_lookups_total", "entity" => entity.to_owned(), "source" => source.label())
            .increment(1);
        let snapshot = snapshot(entity, &counters);
        metrics::gauge!("cachecoord_hit_ratio", "entity" => entity.to_owned())
            .set(snapshot.hit_ratio());
    }

    /// Every entity's counters, sorted by entity.
    pub(crate) fn snapshot(&self) -> Vec<EntityStats> {
        let by_entity = self.by_entity.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<EntityStats> = by_entity.iter().map(|(e, c)| snapshot(e, c)).collect();
        all.sort_by(|a, b| a.entity.cmp(&b.entity));
        all
    }

    fn counters(&self, entity: &str) -> Arc<Counters> {
        if let Some(counters) = self
            .by_entity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(entity)
        {
            return counters.clone();
        }
        let mut by_entity = self.by_entity.write().unwrap_or_else(|p| p.into_inner());
        by_entity.entry(entity.to_owned()).or_default().clone()
    }
}

fn snapshot(entity: &str, counters: &Counters) -> EntityStats {
    EntityStats {
        entity: entity.to_owned(),
        counts: std::array::from_fn(|i| counters.0[i].load(Ordering::Relaxed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_entity_and_computes_the_hit_ratio() {
        let stats = Stats::default();
        for source in [Source::Hit, Source::Hit, Source::NearHit, Source::Loaded] {
            stats.record("user", source);
        }
        stats.record("posts", Source::Miss);
        let all = stats.snapshot();
        assert_eq!(
            all.iter().map(|s| s.entity.as_str()).collect::<Vec<_>>(),
            ["posts", "user"]
        );
        assert_eq!(all[1].count(Source::Hit), 2);
        assert_eq!(all[1].hit_ratio(), 0.75);
        assert_eq!(all[0].hit_ratio(), 0.0);
    }
}
