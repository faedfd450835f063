//! The entry envelope: how a value is laid out in the store, so every replica reads the same facts about it.
//!
//! Layout (format 2, all integers big-endian):
//!
//! | bytes  | field           | why                                                                   |
//! |--------|-----------------|-----------------------------------------------------------------------|
//! | 0      | magic `0xCC`    | tells a cachecoord entry from bytes someone else wrote                 |
//! | 1      | format `2`      | lets later formats add fields                                          |
//! | 2      | flags           | bit 0: negative entry (the loader said "not found"); bit 1: sealed     |
//! | 3..11  | fresh_until_ms  | Unix ms after which the entry is stale: `ttl_remaining` without PTTL   |
//! | 11..19 | version         | caller's version for versioned Sets (0 = none), as the caller wrote it |
//! | 19..23 | load_ms         | how long the load took: XFetch's δ for early refresh                  |
//! | 23..   | value           | the caller's bytes, untouched, or sealed by `encryption` when bit 1   |
//!
//! A sealed envelope's header stays in the clear (every reader needs it before opening anything), but it is
//! authenticated: sealing gets the header bytes to bind as associated data, so a header changed in the store
//! (freshness pushed out, version raised, flags flipped) makes the envelope fail to open. A negative entry of an
//! encrypted entity is sealed too (an empty plaintext), so "not found" cannot be planted in the clear.
//!
//! A reader that finds bytes it does not recognise treats them as a miss rather than serving something it cannot
//! vouch for. No store reads this envelope: the version a store compares travels beside the bytes
//! (`StoreWrite::version`) and the store keeps it in its own record.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: u8 = 0xCC;
const FORMAT: u8 = 2;
const FLAG_NEGATIVE: u8 = 1;
const FLAG_SEALED: u8 = 2;
/// Length of the header before the caller's bytes.
const HEADER_LEN: usize = 23;

/// A value (or a remembered absence) with the facts every replica needs about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The caller's bytes; `None` for a negative entry.
    pub value: Option<Bytes>,
    /// Unix milliseconds after which the entry is stale.
    pub fresh_until_ms: u64,
    /// Version given by a versioned Set; 0 when none was.
    pub version: u64,
    /// Milliseconds the load that produced the entry took; 0 when it was Set.
    pub load_ms: u32,
}

/// An envelope read from the store, before anything in it is trusted beyond its shape.
pub(super) enum Envelope {
    /// Written in the clear: the entry as it was encoded.
    Plain(Entry),
    /// Written sealed: the entry once [`Sealed::open`] has authenticated it.
    Sealed(Sealed),
}

/// A sealed envelope, not yet opened.
pub(super) struct Sealed {
    stored: Bytes,
}

impl Entry {
    /// An entry that stays fresh for `ttl` from now.
    pub fn fresh_for(value: Option<Bytes>, ttl: Duration) -> Entry {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Entry {
            value,
            fresh_until_ms: now_ms().saturating_add(ttl_ms),
            version: 0,
            load_ms: 0,
        }
    }

    /// Time left before the entry goes stale; `None` once it has.
    pub fn ttl_remaining(&self) -> Option<Duration> {
        self.fresh_until_ms
            .checked_sub(now_ms())
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
    }

    /// How long ago the entry went stale; `None` while it is fresh.
    pub fn stale_for(&self) -> Option<Duration> {
        now_ms()
            .checked_sub(self.fresh_until_ms)
            .map(Duration::from_millis)
    }

    /// The bytes written to the store, in the clear.
    pub fn encode(&self) -> Bytes {
        let value = self.value.as_deref().unwrap_or_default();
        let mut out = self.header(0, value.len());
        out.put_slice(value);
        out.freeze()
    }

    /// The bytes written to the store, the value (empty for a negative entry) sealed by `seal(header,
    /// plaintext)`, which must bind the header it is given.
    pub(super) fn seal(&self, seal: impl FnOnce(&[u8], &[u8]) -> Bytes) -> Bytes {
        let value = self.value.as_deref().unwrap_or_default();
        let mut out = self.header(FLAG_SEALED, value.len());
        let sealed = seal(&out, value);
        out.put_slice(&sealed);
        out.freeze()
    }

    /// The header, with `flags` besides the negative one, in a buffer with room for `value_len` more bytes.
    fn header(&self, flags: u8, value_len: usize) -> BytesMut {
        let mut out = BytesMut::with_capacity(HEADER_LEN + value_len);
        out.put_u8(MAGIC);
        out.put_u8(FORMAT);
        let negative = if self.value.is_none() {
            FLAG_NEGATIVE
        } else {
            0
        };
        out.put_u8(negative | flags);
        out.put_u64(self.fresh_until_ms);
        out.put_u64(self.version);
        out.put_u32(self.load_ms);
        out
    }

    /// Reads what `encode` wrote; `None` for a sealed envelope and for bytes in any other shape.
    pub fn decode(stored: Bytes) -> Option<Entry> {
        match Envelope::parse(stored)? {
            Envelope::Plain(entry) => Some(entry),
            Envelope::Sealed(_) => None,
        }
    }

    /// The entry described by `stored`'s header (which must be whole), holding `value` unless it is negative.
    fn from_header(stored: &[u8], value: Bytes) -> Entry {
        let mut header = &stored[2..HEADER_LEN];
        let flags = header.get_u8();
        Entry {
            fresh_until_ms: header.get_u64(),
            version: header.get_u64(),
            load_ms: header.get_u32(),
            value: (flags & FLAG_NEGATIVE == 0).then_some(value),
        }
    }
}

impl Envelope {
    /// Reads what [`Entry::encode`] or [`Entry::seal`] wrote; `None` for bytes in any other shape.
    pub(super) fn parse(stored: Bytes) -> Option<Envelope> {
        if stored.len() < HEADER_LEN || stored[0] != MAGIC || stored[1] != FORMAT {
            return None;
        }
        Some(if stored[2] & FLAG_SEALED != 0 {
            Envelope::Sealed(Sealed { stored })
        } else {
            let value = stored.slice(HEADER_LEN..);
            Envelope::Plain(Entry::from_header(&stored, value))
        })
    }
}

impl Sealed {
    /// The entry, its value opened by `open(header, sealed value)`; `None` when that does not open it (wrong
    /// key, tampered bytes or header). The header is trusted only once `open` has authenticated it.
    pub(super) fn open(self, open: impl FnOnce(&[u8], &[u8]) -> Option<Bytes>) -> Option<Entry> {
        let (header, sealed) = self.stored.split_at(HEADER_LEN);
        let plaintext = open(header, sealed)?;
        Some(Entry::from_header(&self.stored, plaintext))
    }
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_values_and_absences() {
        for value in [
            Some(&b""[..]),
            Some(b"{\"name\":\"ada\"}"),
            Some(&[0xCC, 0x02, 0, 0]),
            None,
        ] {
            let mut entry =
                Entry::fresh_for(value.map(Bytes::copy_from_slice), Duration::from_secs(60));
            entry.version = 7;
            entry.load_ms = 120;
            assert_eq!(Entry::decode(entry.encode()), Some(entry));
        }
    }

    /// A stand-in for sealing that binds the header: the header, then the plaintext reversed.
    fn toy_seal(header: &[u8], plaintext: &[u8]) -> Bytes {
        let mut sealed = header.to_vec();
        sealed.extend(plaintext.iter().rev());
        sealed.into()
    }

    fn toy_open(header: &[u8], sealed: &[u8]) -> Option<Bytes> {
        let plaintext = sealed.strip_prefix(header)?;
        Some(plaintext.iter().rev().copied().collect())
    }

    #[test]
    fn sealed_envelopes_open_only_with_their_own_header() {
        for value in [Some(&b"secret"[..]), None] {
            let mut entry =
                Entry::fresh_for(value.map(Bytes::copy_from_slice), Duration::from_secs(60));
            entry.version = 7;
            let stored = entry.seal(toy_seal);
            assert!(!stored.windows(6).any(|w| w == b"secret"));
            assert_eq!(Entry::decode(stored.clone()), None, "sealed is not plain");
            let Some(Envelope::Sealed(sealed)) = Envelope::parse(stored.clone()) else {
                panic!("a sealed envelope");
            };
            assert_eq!(sealed.open(toy_open), Some(entry));

            let mut forged = stored.to_vec();
            forged[3] ^= 0x40; // fresh_until, decades later
            let Some(Envelope::Sealed(sealed)) = Envelope::parse(forged.into()) else {
                panic!("still a sealed envelope");
            };
            assert_eq!(sealed.open(toy_open), None);
        }
    }

    #[test]
    fn foreign_bytes_are_not_entries() {
        for stored in [
            &b""[..],
            b"plain text written by someone else, long enough to pass for a header",
            &[
                0xCC, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ] {
            assert_eq!(Entry::decode(Bytes::copy_from_slice(stored)), None);
        }
    }

    #[test]
    fn freshness_counts_down() {
        let entry = Entry::fresh_for(Some(Bytes::new()), Duration::from_secs(60));
        let left = entry.ttl_remaining().unwrap();
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
        assert_eq!(entry.stale_for(), None);
        let stale = Entry {
            fresh_until_ms: now_ms() - 5_000,
            ..entry
        };
        assert_eq!(stale.ttl_remaining(), None);
        assert!(stale.stale_for().unwrap() >= Duration::from_secs(5));
    }
}
