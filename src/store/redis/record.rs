//! What the Redis store keeps under a key's value: its own record around the caller's payload, written by the
//! write scripts and opened on every read. The payload (the cache's entry envelope) is opaque here; the store
//! keeps what it needs to compare itself.
//!
//! | bytes  | field          | why                                                                          |
//! |--------|----------------|------------------------------------------------------------------------------|
//! | 0..8   | group epoch    | the record is served only while the group's epoch key holds the same bytes  |
//! | 8      | format `0x01`  | tells this record from bytes written in any other format (read as a miss)   |
//! | 9..17  | version        | the write's version (0 when none), big-endian: versioned writes compare it  |
//! | 17..   | payload        | the bytes the caller wrote, untouched                                        |
//!
//! Rust builds the header (format and version) and the scripts put the epoch in front; `scripts/set.lua` compares
//! the version byte by byte after the epoch, taking the header's length from the header it is given.

use bytes::Bytes;

/// Bytes of group epoch in front of every record.
const EPOCH_LEN: usize = 8;
/// This record format. Anything else at its place (such as the first byte of a bare cache envelope written by
/// an older release) is not a record of ours and reads as a miss.
const FORMAT: u8 = 0x01;
/// Format byte and version.
const HEADER_LEN: usize = 1 + 8;

/// The header a write carries: the format byte, then `version` (0 when none) big-endian.
pub(super) fn header(version: Option<u64>) -> Bytes {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.push(FORMAT);
    header.extend_from_slice(&version.unwrap_or(0).to_be_bytes());
    header.into()
}

/// 8 random bytes, offered to a write script in case the group needs a new epoch.
pub(super) fn fresh_epoch() -> Bytes {
    Bytes::copy_from_slice(&rand::random::<[u8; EPOCH_LEN]>())
}

/// The payload of `record`, if it belongs to the group's live `epoch` and is in this format; `None` (a miss)
/// otherwise.
pub(super) fn payload(record: &Bytes, epoch: &[u8]) -> Option<Bytes> {
    let live = record.len() >= EPOCH_LEN + HEADER_LEN
        && record[..EPOCH_LEN] == *epoch
        && record[EPOCH_LEN] == FORMAT;
    live.then(|| record.slice(EPOCH_LEN + HEADER_LEN..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: &[u8], header: &[u8], payload: &[u8]) -> Bytes {
        [epoch, header, payload].concat().into()
    }

    #[test]
    fn a_live_record_opens_to_its_payload() {
        let epoch = [7u8; EPOCH_LEN];
        let stored = record(&epoch, &header(Some(3)), b"entry");
        assert_eq!(payload(&stored, &epoch), Some(Bytes::from_static(b"entry")));
        let empty = record(&epoch, &header(None), b"");
        assert_eq!(payload(&empty, &epoch), Some(Bytes::new()));
    }

    #[test]
    fn other_epochs_and_formats_read_as_misses() {
        let epoch = [7u8; EPOCH_LEN];
        let stored = record(&epoch, &header(Some(3)), b"entry");
        assert_eq!(payload(&stored, &[8u8; EPOCH_LEN]), None);
        // An older release stored the cache envelope (magic 0xCC) right after the epoch.
        let old = record(&epoch, &[0xCC, 2, 0], &[0u8; 30]);
        assert_eq!(payload(&old, &epoch), None);
        assert_eq!(payload(&Bytes::from_static(b"short"), &epoch), None);
    }

    #[test]
    fn headers_order_by_version_bytewise() {
        // set.lua compares headers byte by byte; that order must be the versions' order.
        assert!(header(Some(256)) > header(Some(255)));
        assert!(header(Some(1)) > header(None));
        assert_eq!(header(Some(0)), header(None));
    }
}
