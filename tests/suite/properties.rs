//! Properties of the grammar and the formats every replica shares, checked by proptest on generated input (these
//! run in CI with the other tests; the cargo-fuzz targets in fuzz/ explore the same code for longer, see
//! docs/security.md).

use cachecoord::auth::scope::Scope;
use cachecoord::cache::Entry;
use cachecoord::keys::{Key, Pattern};
use proptest::prelude::*;
use std::time::Duration;

/// A key segment from the key alphabet (a small one, so generated patterns and keys often meet).
fn segment() -> impl Strategy<Value = String> {
    "[a-c0-2_.-]{1,4}"
}

fn key() -> impl Strategy<Value = String> {
    proptest::collection::vec(segment(), 2..5).prop_map(|s| s.join(":"))
}

/// A glob over the same small alphabet plus `:`, `*` and `?`.
fn pattern() -> impl Strategy<Value = String> {
    "[a-c0-2:*?]{1,10}"
}

/// The reference matcher: Redis glob semantics for `*` and `?`, by plain recursion (exponential, fine for
/// short inputs; the matcher under test must agree with it and stay linear).
fn reference_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| reference_match(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && reference_match(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && reference_match(rest, &text[1..]),
    }
}

/// A key the pattern matches, with each `*` replaced by `fill` and each `?` by `one`.
fn instantiate(pattern: &str, fill: &str, one: char) -> String {
    pattern
        .chars()
        .flat_map(|c| match c {
            '*' => fill.chars().collect::<Vec<_>>(),
            '?' => vec![one],
            c => vec![c],
        })
        .collect()
}

proptest! {
    #[test]
    fn grammatical_keys_parse_and_keep_their_parts(raw in key(), ns in "[a-z0-9_-]{1,8}") {
        let plain = Key::parse(&raw, 512).unwrap();
        prop_assert_eq!(plain.as_str(), raw.as_str());
        prop_assert_eq!(plain.local(), raw.as_str());
        prop_assert_eq!(plain.namespace(), "");
        prop_assert_eq!(Some(plain.entity()), raw.split(':').next());

        let qualified = Key::parse(&format!("{ns}|{raw}"), 512).unwrap();
        prop_assert_eq!(qualified.local(), raw.as_str());
        prop_assert_eq!(qualified.namespace(), ns.as_str());
        prop_assert_eq!(qualified.entity(), plain.entity());
    }

    #[test]
    fn a_reserved_character_anywhere_is_refused(raw in key(), at in any::<prop::sample::Index>(), c in prop::sample::select(vec!['*', '?', '[', ']', '{', '}', '\\', ' ', '\n', '|'])) {
        let mut chars: Vec<char> = raw.chars().collect();
        let i = at.index(chars.len() + 1);
        chars.insert(i, c);
        let bad: String = chars.into_iter().collect();
        // `|` at a segment boundary could read as a namespace separator only with a valid namespace before it;
        // what matters is that the result is never the same key in the default namespace.
        match Key::parse(&bad, 512) {
            Err(_) => {}
            Ok(key) => prop_assert!(c == '|' && !key.namespace().is_empty()),
        }
    }

    #[test]
    fn glob_matching_agrees_with_the_reference(p in pattern(), k in key()) {
        let parsed = Pattern::parse(&p, 512, true).unwrap();
        prop_assert_eq!(parsed.matches(&k), reference_match(p.as_bytes(), k.as_bytes()));
    }

    #[test]
    fn patterns_match_their_instances(p in pattern(), fill in "[a-c:]{0,5}", one in prop::sample::select(vec!['a', ':', '1'])) {
        let parsed = Pattern::parse(&p, 512, true).unwrap();
        prop_assert!(parsed.matches(&instantiate(&p, &fill, one)));
    }

    /// A scope that allows a pattern allows every key the pattern can match: the authorisation check is sound.
    #[test]
    fn scopes_allow_patterns_only_when_they_allow_every_match(
        scope in "[a-c:]{0,4}\\*?",
        p in pattern(),
        fill in "[a-c:]{0,5}",
        one in prop::sample::select(vec!['a', ':', '1']),
    ) {
        let scope = Scope::try_from(scope).unwrap();
        if scope.covers_pattern(&p) {
            let instance = instantiate(&p, &fill, one);
            prop_assert!(scope.covers_key(&instance), "{scope} allows {p} but not its match {instance}");
        }
    }

    #[test]
    fn entries_round_trip(value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)), version in any::<u64>(), load_ms in any::<u32>(), ttl_ms in 0u64..10_000_000) {
        let mut entry = Entry::fresh_for(value.map(Into::into), Duration::from_millis(ttl_ms));
        entry.version = version;
        entry.load_ms = load_ms;
        prop_assert_eq!(Entry::decode(entry.encode()), Some(entry));
    }

    #[test]
    fn arbitrary_stored_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Entry::decode(bytes.into());
    }
}
