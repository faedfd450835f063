//! What one replica lends its callers: slots among the calls in flight and bytes of buffered requests and
//! responses, from one pool for the replica and one share per caller, so that no caller can take all of either.
//!
//! A caller is a token (by namespace and name) when auth is on, and a peer address when it is off (several
//! connections from one client are one caller). A call takes
//! its slot from the headers and its bytes as its request arrives and when its response is built; it gives all
//! of them back when the last of its request body, its handler and its response body is gone.

use crate::Error;
use crate::config::LimitsConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A counted resource with a ceiling: calls in flight, or bytes.
#[derive(Debug)]
pub(super) struct Pool {
    used: AtomicUsize,
    ceiling: usize,
}

impl Pool {
    fn new(ceiling: usize) -> Pool {
        Pool {
            used: AtomicUsize::new(0),
            ceiling,
        }
    }

    /// Takes `amount` if it fits under the ceiling; never waits.
    fn take(&self, amount: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(amount)
                    .filter(|&after| after <= self.ceiling)
            })
            .is_ok()
    }

    fn give(&self, amount: usize) {
        self.used.fetch_sub(amount, Ordering::AcqRel);
    }

    /// How much is taken now.
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One caller's share, or the replica's whole pool: slots and bytes.
#[derive(Debug)]
pub(super) struct Share {
    slots: Pool,
    bytes: Pool,
}

impl Share {
    fn new(slots: usize, bytes: usize) -> Share {
        Share {
            slots: Pool::new(slots),
            bytes: Pool::new(bytes),
        }
    }
}

/// The replica's pool and its callers' shares.
#[derive(Debug)]
pub(super) struct Budget {
    replica: Share,
    /// Shares of authenticated callers by namespace and token name: bounded by the tokens file.
    callers: Mutex<HashMap<(String, String), Arc<Share>>>,
    /// Shares of peer addresses (auth off), kept while a connection from the address is open.
    peers: Mutex<HashMap<IpAddr, Arc<Share>>>,
    caller_slots: usize,
    caller_bytes: usize,
    /// `cachecoord_requests_in_flight`: the slots taken, the load signal the chart's autoscaler follows.
    in_flight: metrics::Gauge,
}

impl Budget {
    pub(super) fn new(limits: &LimitsConfig) -> Budget {
        Budget {
            replica: Share::new(limits.max_in_flight, limits.memory_budget_bytes),
            callers: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            caller_slots: limits.caller_max_in_flight,
            caller_bytes: limits.caller_memory_bytes,
            // Exported from the start, not from the first call: an autoscaler reads a pod without the series as
            // one it cannot judge.
            in_flight: {
                let gauge = metrics::gauge!("cachecoord_requests_in_flight");
                gauge.set(0.0);
                gauge
            },
        }
    }

    /// The share of a peer address, for the connections of an auth-off replica.
    pub(super) fn peer_share(&self, peer: IpAddr) -> Arc<Share> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        // Addresses with no connection left (pod IPs churn) are dropped in bulk, rarely.
        if peers.len() >= 4096 {
            peers.retain(|_, share| Arc::strong_count(share) > 1);
        }
        peers
            .entry(peer)
            .or_insert_with(|| Arc::new(Share::new(self.caller_slots, self.caller_bytes)))
            .clone()
    }

    /// The share of the token named `name` in `namespace`.
    pub(super) fn caller_share(&self, namespace: &str, name: &str) -> Arc<Share> {
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = callers.get(&(namespace.to_owned(), name.to_owned())) {
            return share.clone();
        }
        let share = Arc::new(Share::new(self.caller_slots, self.caller_bytes));
        callers.insert((namespace.to_owned(), name.to_owned()), share.clone());
        share
    }

    /// Calls in flight and bytes held on this replica now.
    #[cfg(test)]
    fn replica_use(&self) -> (usize, usize) {
        (self.replica.slots.used(), self.replica.bytes.used())
    }

    /// Request and response bytes held on this replica now.
    pub(super) fn held_bytes(&self) -> usize {
        self.replica.bytes.used()
    }

    /// Admits one call for `caller`, or says which ceiling refused it.
    pub(super) fn admit(self: &Arc<Self>, caller: Arc<Share>) -> Result<CallBudget, Error> {
        if !caller.slots.take(1) {
            return Err(Error::Overloaded {
                max: self.caller_slots,
                whose: "caller",
            });
        }
        if !self.replica.slots.take(1) {
            caller.slots.give(1);
            return Err(Error::Overloaded {
                max: self.replica.slots.ceiling,
                whose: "replica",
            });
        }
        self.in_flight.increment(1.0);
        Ok(CallBudget {
            budget: self.clone(),
            caller,
            bytes: AtomicUsize::new(0),
        })
    }
}

/// One admitted call's slot and the bytes it holds; all given back when it is dropped.
#[derive(Debug)]
pub(crate) struct CallBudget {
    budget: Arc<Budget>,
    caller: Arc<Share>,
    bytes: AtomicUsize,
}

impl CallBudget {
    /// Takes `amount` more bytes for this call from its caller's share and the replica's pool: refused with
    /// RESOURCE_EXHAUSTED (reason MEMORY_BUDGET) when either is spent.
    pub(crate) fn hold(&self, amount: usize) -> Result<(), Error> {
        if !self.caller.bytes.take(amount) {
            return Err(Error::MemoryBudget {
                max: self.caller.bytes.ceiling,
                whose: "caller",
            });
        }
        if !self.budget.replica.bytes.take(amount) {
            self.caller.bytes.give(amount);
            return Err(Error::MemoryBudget {
                max: self.budget.replica.bytes.ceiling,
                whose: "replica",
            });
        }
        self.bytes.fetch_add(amount, Ordering::AcqRel);
        Ok(())
    }
}

impl Drop for CallBudget {
    fn drop(&mut self) {
        let bytes = *self.bytes.get_mut();
        self.caller.bytes.give(bytes);
        self.budget.replica.bytes.give(bytes);
        self.caller.slots.give(1);
        self.budget.replica.slots.give(1);
        self.budget.in_flight.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(slots: usize, bytes: usize, caller_slots: usize, caller_bytes: usize) -> Arc<Budget> {
        Arc::new(Budget::new(&LimitsConfig {
            max_in_flight: slots,
            memory_budget_bytes: bytes,
            caller_max_in_flight: caller_slots,
            caller_memory_bytes: caller_bytes,
            ..LimitsConfig::default()
        }))
    }

    #[test]
    fn a_caller_cannot_take_more_than_its_share() {
        let budget = budget(10, 1000, 2, 300);
        let greedy = budget.caller_share("team", "greedy");
        let first = budget.admit(greedy.clone()).unwrap();
        let _second = budget.admit(greedy.clone()).unwrap();
        assert!(matches!(
            budget.admit(greedy.clone()),
            Err(Error::Overloaded {
                whose: "caller",
                ..
            })
        ));
        first.hold(300).unwrap();
        assert!(matches!(
            first.hold(1),
            Err(Error::MemoryBudget {
                whose: "caller",
                ..
            })
        ));
        // Another caller is untouched by the first one's spending.
        let other = budget.admit(budget.caller_share("team", "other")).unwrap();
        other.hold(300).unwrap();
        assert_eq!(budget.replica_use(), (3, 600));
    }

    #[test]
    fn the_replica_pool_bounds_all_callers_together() {
        let budget = budget(10, 500, 5, 300);
        let a = budget.admit(budget.caller_share("t", "a")).unwrap();
        let b = budget.admit(budget.caller_share("t", "b")).unwrap();
        a.hold(300).unwrap();
        assert!(matches!(
            b.hold(201),
            Err(Error::MemoryBudget {
                whose: "replica",
                ..
            })
        ));
        // The refused amount was given back to b's share.
        b.hold(200).unwrap();
        assert_eq!(budget.replica_use(), (2, 500));
    }

    #[test]
    fn a_finished_call_gives_everything_back() {
        let budget = budget(1, 100, 1, 100);
        let share = budget.peer_share(std::net::Ipv4Addr::LOCALHOST.into());
        let call = budget.admit(share.clone()).unwrap();
        call.hold(100).unwrap();
        drop(call);
        assert_eq!(budget.replica_use(), (0, 0));
        let again = budget.admit(share).unwrap();
        again.hold(100).unwrap();
    }
}
