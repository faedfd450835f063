//! The entry envelope: how a value is laid out in the store, so every replica reads the same facts about it.
//!
//! Layout (format 1): magic `0xCC`, format byte `1`, `fresh_until` as big-endian Unix milliseconds, then the
//! caller's bytes untouched. Carrying the deadline in the value answers `ttl_remaining` from the same read as the
//! value (no PTTL round trip) and leaves room for later formats to add fields; a reader that finds bytes it does
//! not recognise treats them as a miss rather than serving something it cannot vouch for.

use bytes::{BufMut, Bytes, BytesMut};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: u8 = 0xCC;
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 2 + 8;

/// A value together with the moment it stops being fresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The caller's bytes.
    pub value: Bytes,
    /// Unix milliseconds after which the entry is no longer served as a hit.
    pub fresh_until_ms: u64,
}

impl Entry {
    /// An entry that stays fresh for `ttl` from now.
    pub fn fresh_for(value: Bytes, ttl: Duration) -> Entry {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Entry {
            value,
            fresh_until_ms: now_ms().saturating_add(ttl_ms),
        }
    }

    /// Time left before the entry goes stale; `None` once it has.
    pub fn ttl_remaining(&self) -> Option<Duration> {
        self.fresh_until_ms
            .checked_sub(now_ms())
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
    }

    /// The bytes written to the store.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.value.len());
        out.put_u8(MAGIC);
        out.put_u8(FORMAT);
        out.put_u64(self.fresh_until_ms);
        out.put_slice(&self.value);
        out.freeze()
    }

    /// Reads what `encode` wrote; `None` for bytes in any other shape.
    pub fn decode(stored: Bytes) -> Option<Entry> {
        if stored.len() < HEADER_LEN || stored[0] != MAGIC || stored[1] != FORMAT {
            return None;
        }
        let fresh_until_ms = u64::from_be_bytes(stored[2..HEADER_LEN].try_into().ok()?);
        Some(Entry {
            value: stored.slice(HEADER_LEN..),
            fresh_until_ms,
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_bytes() {
        for value in [&b""[..], b"{\"name\":\"ada\"}", &[0xCC, 0x01, 0, 0]] {
            let entry = Entry::fresh_for(Bytes::copy_from_slice(value), Duration::from_secs(60));
            assert_eq!(Entry::decode(entry.encode()), Some(entry));
        }
    }

    #[test]
    fn foreign_bytes_are_not_entries() {
        for stored in [
            &b""[..],
            b"plain text written by someone else",
            &[0xCC, 0x02, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(Entry::decode(Bytes::copy_from_slice(stored)), None);
        }
    }

    #[test]
    fn remaining_ttl_counts_down() {
        let entry = Entry::fresh_for(Bytes::new(), Duration::from_secs(60));
        let left = entry.ttl_remaining().unwrap();
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
        let stale = Entry {
            value: Bytes::new(),
            fresh_until_ms: 1,
        };
        assert_eq!(stale.ttl_remaining(), None);
    }
}
