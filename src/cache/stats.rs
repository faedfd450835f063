//! Per-entity answer counters: what the `Stats` RPC reports and what the Prometheus metrics show, counted at the
//! same place so the two always agree. The entity is the policy that governs the key (a bounded set, from the
//! configuration), so a caller inventing entities cannot blow up the metric cardinality. The staleness sampler's
//! checks are counted here too, per entity and result.

use super::types::{CheckResult, Source};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// One entity's counters, as reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityStats {
    /// The policy name.
    pub entity: String,
    /// Answers per source, in the order of [`EntityStats::by_source`].
    pub counts: [u64; 8],
    /// The staleness sampler's checks per result, in [`CheckResult::ALL`] order.
    pub checks: [u64; 7],
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

    /// Every check result with its count.
    pub fn checks_by_result(&self) -> impl Iterator<Item = (CheckResult, u64)> + '_ {
        CheckResult::ALL
            .iter()
            .copied()
            .zip(self.checks.iter().copied())
    }

    /// Stale checks over compared ones (fresh, stale, in flight); 0 when none was compared.
    pub fn staleness_ratio(&self) -> f64 {
        staleness_ratio(self.checks_by_result())
    }
}

/// Stale over compared checks (0 when none was): skipped samples say nothing about the cache.
fn staleness_ratio(checks: impl Iterator<Item = (CheckResult, u64)>) -> f64 {
    let (mut stale, mut compared) = (0, 0);
    for (result, count) in checks {
        if result.is_compared() {
            compared += count;
        }
        if result == CheckResult::Stale {
            stale += count;
        }
    }
    if compared == 0 {
        0.0
    } else {
        stale as f64 / compared as f64
    }
}

/// One entity's counters, with its metric series: handles taken once, when the entity is first counted, so a
/// lookup does not build the series' label set and find it in the registry again.
struct Counters {
    counts: [AtomicU64; 8],
    /// `cachecoord_lookups_total{entity, source}`, per source in [`Source::ALL`] order; taken at the source's
    /// first answer, so a series appears only once it counts something (as before handles were kept).
    lookups: [OnceLock<metrics::Counter>; 8],
    entity: String,
    /// `cachecoord_hit_ratio{entity}`.
    hit_ratio: metrics::Gauge,
    /// The staleness sampler's checks per result, in [`CheckResult::ALL`] order.
    checks: [AtomicU64; 7],
    /// `cachecoord_consistency_checks_total{entity, result}`, taken at the result's first check.
    check_series: [OnceLock<metrics::Counter>; 7],
    /// `cachecoord_staleness_ratio{entity}`, taken at the entity's first check: entities that do not sample
    /// export none.
    staleness_ratio: OnceLock<metrics::Gauge>,
}

impl Counters {
    fn new(entity: &str) -> Counters {
        Counters {
            counts: Default::default(),
            lookups: Default::default(),
            entity: entity.to_owned(),
            hit_ratio: metrics::gauge!("cachecoord_hit_ratio", "entity" => entity.to_owned()),
            checks: Default::default(),
            check_series: Default::default(),
            staleness_ratio: OnceLock::new(),
        }
    }

    /// Hits over all answers so far (0 when there were none).
    fn hit_ratio(&self) -> f64 {
        let (mut hits, mut total) = (0, 0);
        for (source, count) in Source::ALL.iter().zip(&self.counts) {
            let count = count.load(Ordering::Relaxed);
            total += count;
            if source.is_hit() {
                hits += count;
            }
        }
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }
}

/// The counters of every entity seen so far.
#[derive(Default)]
pub(crate) struct Stats {
    by_entity: RwLock<HashMap<String, Arc<Counters>>>,
}

impl Stats {
    /// Counts one answer for `entity`, and mirrors it to the metrics (counter and hit-ratio gauge).
    pub(crate) fn record(&self, entity: &str, source: Source) {
        let counters = self.counters(entity);
        counters.counts[source.index()].fetch_add(1, Ordering::Relaxed);
        counters.lookups[source.index()]
            .get_or_init(|| {
                metrics::counter!("cachecoord_lookups_total", "entity" => counters.entity.clone(), "source" => source.label())
            })
            .increment(1);
        counters.hit_ratio.set(counters.hit_ratio());
    }

    /// Counts one staleness check of `entity`'s hits, and mirrors it to the metrics (counter and ratio gauge).
    pub(crate) fn record_check(&self, entity: &str, result: CheckResult) {
        let counters = self.counters(entity);
        counters.checks[result.index()].fetch_add(1, Ordering::Relaxed);
        counters.check_series[result.index()]
            .get_or_init(|| {
                metrics::counter!("cachecoord_consistency_checks_total", "entity" => counters.entity.clone(), "result" => result.label())
            })
            .increment(1);
        let checks = CheckResult::ALL
            .iter()
            .copied()
            .zip(counters.checks.iter().map(|c| c.load(Ordering::Relaxed)));
        counters
            .staleness_ratio
            .get_or_init(|| {
                metrics::gauge!("cachecoord_staleness_ratio", "entity" => counters.entity.clone())
            })
            .set(staleness_ratio(checks));
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
        by_entity
            .entry(entity.to_owned())
            .or_insert_with(|| Arc::new(Counters::new(entity)))
            .clone()
    }
}

fn snapshot(entity: &str, counters: &Counters) -> EntityStats {
    EntityStats {
        entity: entity.to_owned(),
        counts: std::array::from_fn(|i| counters.counts[i].load(Ordering::Relaxed)),
        checks: std::array::from_fn(|i| counters.checks[i].load(Ordering::Relaxed)),
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

    #[test]
    fn the_staleness_ratio_counts_compared_checks_only() {
        let stats = Stats::default();
        stats.record("user", Source::Hit);
        for result in [
            CheckResult::Fresh,
            CheckResult::Fresh,
            CheckResult::InFlight,
            CheckResult::Stale,
            CheckResult::Dropped,
            CheckResult::BreakerOpen,
        ] {
            stats.record_check("user", result);
        }
        let user = &stats.snapshot()[0];
        assert_eq!(user.checks[CheckResult::Fresh.index()], 2);
        assert_eq!(user.staleness_ratio(), 0.25);
        assert_eq!(Stats::default().snapshot(), vec![]);
    }
}
