//! Encryption at rest for entities whose policy says `encrypt = true`.
//!
//! AES-256-GCM (RustCrypto `aes-gcm`) with a fresh random 96-bit nonce per write. The associated data binds the
//! whole envelope: the entry header (freshness, version, flags, load time) and the stored key (namespace
//! included), so a ciphertext copied to another key, or put back under a forged header, does not decrypt. The
//! sealed value is `key id length (1 byte) | key id | nonce (12) | ciphertext and tag`; the key id lets keys
//! rotate: new writes use the active key, and entries written under an older key decrypt while its file is
//! still in the keys directory. An entry that cannot be opened (its key removed, bytes or header tampered with,
//! or sealed by a release that bound only the key) reads as a miss.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::path::Path;

const NONCE_LEN: usize = 12;
/// Starts the associated data: names what is bound, so it can never equal the key-only associated data of
/// entries sealed before the header was bound (those read as misses, and expire).
const AAD_LABEL: &[u8] = b"cachecoord entry header+key\0";

/// Every configured key, and the one new entries are sealed with.
pub(crate) struct Keyring {
    keys: HashMap<String, Aes256Gcm>,
    active: String,
}

impl Keyring {
    /// Loads every file in `dir` as a key (name = key id, content = 64 hex digits).
    pub(crate) fn from_dir(dir: &Path, active: &str) -> anyhow::Result<Keyring> {
        let mut keys = HashMap::new();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list encryption keys in {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let Some(id) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // Kubernetes mounts Secrets through hidden `..data` links: skip dot files and directories.
            if id.starts_with('.') || path.is_dir() {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read key {}", path.display()))?;
            let key = parse_key(text.trim())
                .with_context(|| format!("key {id:?} must be 64 hex digits (32 bytes)"))?;
            anyhow::ensure!(id.len() <= 255, "key id {id:?} is longer than 255 bytes");
            keys.insert(id.to_owned(), key);
        }
        Keyring::new(keys, active)
    }

    fn new(keys: HashMap<String, Aes256Gcm>, active: &str) -> anyhow::Result<Keyring> {
        anyhow::ensure!(
            keys.contains_key(active),
            "the active encryption key {active:?} is not among the keys found"
        );
        Ok(Keyring {
            keys,
            active: active.to_owned(),
        })
    }

    /// Seals `plaintext` for `stored_key` under the envelope `header` with the active key.
    pub(crate) fn seal(&self, stored_key: &str, header: &[u8], plaintext: &[u8]) -> Bytes {
        let cipher = &self.keys[&self.active];
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::from_slice(&nonce_bytes);
        let payload = Payload {
            msg: plaintext,
            aad: &associated_data(stored_key, header),
        };
        // Encryption fails only for messages beyond GCM's 64 GiB limit, far above any value limit.
        let ciphertext = cipher
            .encrypt(nonce, payload)
            .expect("AES-GCM encrypts any value under 64 GiB");
        let id = self.active.as_bytes();
        let mut out = BytesMut::with_capacity(1 + id.len() + NONCE_LEN + ciphertext.len());
        out.put_u8(id.len() as u8);
        out.put_slice(id);
        out.put_slice(&nonce_bytes);
        out.put_slice(&ciphertext);
        out.freeze()
    }

    /// Opens what [`Keyring::seal`] wrote for `stored_key` under `header`; `None` when the key id is unknown or
    /// the bytes, the header or the key do not authenticate.
    pub(crate) fn open(&self, stored_key: &str, header: &[u8], sealed: &[u8]) -> Option<Bytes> {
        let (&id_len, rest) = sealed.split_first()?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN {
            return None;
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let cipher = self.keys.get(std::str::from_utf8(id).ok()?)?;
        let payload = Payload {
            msg: ciphertext,
            aad: &associated_data(stored_key, header),
        };
        cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .ok()
            .map(Bytes::from)
    }
}

/// The label, the header's length (so header and key cannot trade bytes), the header, then the key.
fn associated_data(stored_key: &str, header: &[u8]) -> Vec<u8> {
    let header_len = u32::try_from(header.len()).expect("an envelope header is a few bytes");
    [
        AAD_LABEL,
        &header_len.to_be_bytes(),
        header,
        stored_key.as_bytes(),
    ]
    .concat()
}

fn parse_key(hex: &str) -> Option<Aes256Gcm> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (byte, i) in bytes.iter_mut().zip((0..64).step_by(2)) {
        *byte = u8::from_str_radix(&hex[i..i + 2], 16).ok()?;
    }
    Aes256Gcm::new_from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[(&str, char)], active: &str) -> Keyring {
        let keys = ids
            .iter()
            .map(|(id, fill)| {
                (
                    (*id).to_owned(),
                    parse_key(&fill.to_string().repeat(64)).unwrap(),
                )
            })
            .collect();
        Keyring::new(keys, active).unwrap()
    }

    #[test]
    fn seals_opens_and_rotates() {
        let header = b"header";
        let old = ring(&[("k1", 'a')], "k1");
        let sealed = old.seal("profile:1", header, b"hello");
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(
            old.open("profile:1", header, &sealed).unwrap(),
            &b"hello"[..]
        );
        assert!(
            old.open("profile:2", header, &sealed).is_none(),
            "bound to its key"
        );
        assert!(
            old.open("profile:1", b"headeR", &sealed).is_none(),
            "bound to its header"
        );

        let rotated = ring(&[("k1", 'a'), ("k2", 'b')], "k2");
        assert_eq!(
            rotated.open("profile:1", header, &sealed).unwrap(),
            &b"hello"[..]
        );
        let new = rotated.seal("profile:1", header, b"hello");
        assert_eq!(&new[1..3], b"k2");
        assert!(
            old.open("profile:1", header, &new).is_none(),
            "k2 unknown to the old ring"
        );

        let mut tampered = sealed.to_vec();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(old.open("profile:1", header, &tampered).is_none());
        assert!(old.open("profile:1", header, &[]).is_none());
    }

    #[test]
    fn header_and_key_cannot_trade_bytes() {
        let ring = ring(&[("k1", 'a')], "k1");
        let sealed = ring.seal("profile:1", b"head", b"hello");
        assert!(ring.open("1", b"headprofile:", &sealed).is_none());
        assert!(ring.open("ile:1", b"headprof", &sealed).is_none());
    }

    #[test]
    fn entries_sealed_with_the_key_alone_do_not_open() {
        let ring = ring(&[("k1", 'a')], "k1");
        let cipher = &ring.keys["k1"];
        let nonce = [7u8; NONCE_LEN];
        let payload = Payload {
            msg: &b"hello"[..],
            aad: b"profile:1",
        };
        let ciphertext = cipher.encrypt(Nonce::from_slice(&nonce), payload).unwrap();
        let old = [&[2u8][..], b"k1", &nonce, &ciphertext].concat();
        assert!(ring.open("profile:1", b"", &old).is_none());
        assert!(ring.open("profile:1", b"header", &old).is_none());
    }
}
