//! Per-entity policies: which TTL a key gets. Rules are tried in configured order and the first whose pattern
//! matches the key wins; keys no rule matches get the default.

use crate::config::{Config, NearCacheMode};
use crate::keys::{Key, Pattern};
use crate::{Error, Result};
use rand::Rng;
use std::time::Duration;

/// One rule of the policy table.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Name used in logs and metrics.
    pub name: String,
    /// Time to live before jitter.
    pub ttl: Duration,
    /// How long a loader's "not found" is remembered.
    pub negative_ttl: Duration,
    /// How long past its TTL an entry is served while a background load refreshes it.
    pub stale_while_revalidate: Duration,
    /// How long past its TTL an entry is served when its loader fails.
    pub stale_if_error: Duration,
    /// XFetch β; 0 disables early refresh.
    pub xfetch_beta: f64,
    /// How long the near-cache may hold this policy's keys; `None` keeps them out of it.
    pub near_cache_ttl: Option<Duration>,
    /// Writes of its keys wait until no replica's near-cache can serve the older value (`near_cache = "strict"`).
    pub near_cache_strict: bool,
    /// Keys are redacted from logs and traces.
    pub sensitive: bool,
    /// Values are stored encrypted.
    pub encrypt: bool,
    /// How long a lease on one of its keys holds before a waiter may take it over.
    pub lease_ttl: Duration,
    /// How long a caller waits for another's fill of one of its keys.
    pub lease_wait: Duration,
    /// Fraction of hits the staleness sampler checks against the source; 0 is off.
    pub staleness_sample_rate: f64,
    pattern: Option<Pattern>,
}

impl Policy {
    /// How long past its TTL an entry stays in the store: the longer of the two stale windows.
    pub fn stale_window(&self) -> Duration {
        self.stale_while_revalidate.max(self.stale_if_error)
    }
}

/// The policy table plus the TTL bounds and jitter that apply to every rule.
#[derive(Clone, Debug)]
pub struct Policies {
    rules: Vec<Policy>,
    default: Policy,
    jitter_ratio: f64,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl Policies {
    /// Builds the table from the (validated) configuration.
    pub fn from_config(config: &Config) -> Result<Policies> {
        let defaults = &config.policy_defaults;
        let rules = config
            .policies
            .iter()
            .map(|rule| {
                Ok(Policy {
                    name: rule.name.clone(),
                    ttl: rule.ttl,
                    negative_ttl: rule.negative_ttl.unwrap_or(defaults.negative_ttl),
                    stale_while_revalidate: rule
                        .stale_while_revalidate
                        .unwrap_or(defaults.stale_while_revalidate),
                    stale_if_error: rule.stale_if_error.unwrap_or(defaults.stale_if_error),
                    xfetch_beta: rule.xfetch_beta.unwrap_or(defaults.xfetch_beta),
                    near_cache_ttl: rule.near_cache_ttl,
                    near_cache_strict: rule.near_cache == NearCacheMode::Strict,
                    sensitive: rule.sensitive,
                    encrypt: rule.encrypt,
                    lease_ttl: rule.lease_ttl.unwrap_or(config.read_through.lease_ttl),
                    lease_wait: rule.lease_wait.unwrap_or(config.read_through.lease_wait),
                    staleness_sample_rate: rule.staleness_sample_rate.unwrap_or(0.0),
                    pattern: Some(Pattern::parse(
                        &rule.pattern,
                        config.limits.max_key_bytes,
                        true,
                    )?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Policies {
            rules,
            default: Policy {
                name: "default".into(),
                ttl: defaults.ttl,
                negative_ttl: defaults.negative_ttl,
                stale_while_revalidate: defaults.stale_while_revalidate,
                stale_if_error: defaults.stale_if_error,
                xfetch_beta: defaults.xfetch_beta,
                near_cache_ttl: None,
                near_cache_strict: false,
                sensitive: false,
                encrypt: false,
                lease_ttl: config.read_through.lease_ttl,
                lease_wait: config.read_through.lease_wait,
                staleness_sample_rate: 0.0,
                pattern: None,
            },
            jitter_ratio: config.policy_defaults.jitter_ratio,
            min_ttl: config.limits.min_ttl,
            max_ttl: config.limits.max_ttl,
        })
    }

    /// The policy that governs `key`.
    pub fn for_key(&self, key: &Key) -> &Policy {
        self.for_raw(key.local())
    }

    /// Whether any policy is `near_cache = "strict"`: then this replica is a near-cache member, and a pattern
    /// invalidation waits as a strict write does (a pattern may match keys of any policy).
    pub fn any_strict(&self) -> bool {
        self.rules.iter().any(|rule| rule.near_cache_strict)
    }

    /// The policy that would govern `raw` (valid key or not), e.g. to decide how to log it.
    pub fn for_raw(&self, raw: &str) -> &Policy {
        self.rules
            .iter()
            .find(|rule| rule.pattern.as_ref().is_some_and(|p| p.matches(raw)))
            .unwrap_or(&self.default)
    }

    /// The TTL to write `key` with: the request's TTL exactly, when given and within bounds; otherwise the
    /// policy's TTL spread by the jitter ratio.
    pub fn ttl_for(&self, key: &Key, requested: Option<Duration>) -> Result<Duration> {
        match requested {
            Some(ttl) if ttl < self.min_ttl || ttl > self.max_ttl => Err(Error::TtlOutOfBounds {
                key: key.to_string(),
                ttl,
                min: self.min_ttl,
                max: self.max_ttl,
            }),
            Some(ttl) => Ok(ttl),
            None => Ok(self.jittered(self.for_key(key).ttl)),
        }
    }

    /// `ttl` spread by the jitter ratio.
    pub fn jittered(&self, ttl: Duration) -> Duration {
        if self.jitter_ratio == 0.0 {
            return ttl;
        }
        let factor = rand::rng().random_range(1.0 - self.jitter_ratio..=1.0 + self.jitter_ratio);
        ttl.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> Key {
        Key::parse(raw, 512).unwrap()
    }

    #[test]
    fn seed_table_first_match_wins() {
        let policies = Policies::from_config(&Config::default()).unwrap();
        let ttl_of = |raw| policies.for_key(&key(raw)).ttl.as_secs();
        assert_eq!(ttl_of("user:123"), 3600);
        assert_eq!(ttl_of("user:123:posts"), 900);
        assert_eq!(ttl_of("user:123:settings"), 86400);
        assert_eq!(ttl_of("posts:42"), 1800);
        assert_eq!(ttl_of("posts:page:1"), 900);
        assert_eq!(ttl_of("settings:global"), 86400);
        assert_eq!(ttl_of("session_free:1"), 600);
    }

    #[test]
    fn jitter_stays_within_its_ratio_and_varies() {
        let policies = Policies::from_config(&Config::default()).unwrap();
        let ttls: Vec<Duration> = (0..200)
            .map(|_| policies.ttl_for(&key("user:1"), None).unwrap())
            .collect();
        assert!(
            ttls.iter()
                .all(|t| *t >= Duration::from_secs(3240) && *t <= Duration::from_secs(3960))
        );
        assert!(ttls.iter().any(|t| *t != ttls[0]));
    }

    #[test]
    fn requested_ttl_is_exact_and_bounded() {
        let policies = Policies::from_config(&Config::default()).unwrap();
        let k = key("user:1");
        assert_eq!(
            policies.ttl_for(&k, Some(Duration::from_secs(5))).unwrap(),
            Duration::from_secs(5)
        );
        assert!(matches!(
            policies.ttl_for(&k, Some(Duration::from_millis(10))),
            Err(Error::TtlOutOfBounds { .. })
        ));
        assert!(matches!(
            policies.ttl_for(&k, Some(Duration::from_secs(30 * 24 * 3600))),
            Err(Error::TtlOutOfBounds { .. })
        ));
    }
}
