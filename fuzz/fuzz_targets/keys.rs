//! The key, pattern and scope grammar on arbitrary input: parsing never panics, accepted input keeps its
//! invariants, and glob matching stays linear however hostile the pattern.
#![no_main]

use cachecoord::auth::scope::Scope;
use cachecoord::keys::{Key, Pattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Split the input into a key half and a pattern half, so the matcher sees independent inputs.
    let (left, right) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i));
    if let Ok(key) = Key::parse(left, 512) {
        assert_eq!(key.as_str(), left);
        assert!(key.local().starts_with(key.entity()));
        assert!(key.as_str().ends_with(key.local()));
        assert!(Pattern::exact(&key).matches(key.as_str()));
    }
    for allow_cross_entity in [false, true] {
        if let Ok(pattern) = Pattern::parse(right, 512, allow_cross_entity) {
            let _ = pattern.matches(left);
            let _ = pattern.wildcards();
            if let Some((group, rest)) = pattern.group_scope() {
                assert_eq!(format!("{group}{rest}"), pattern.as_str());
            }
        }
    }
    if let Ok(scope) = Scope::try_from(right.to_owned()) {
        // Sound: a scope that covers a wildcard-free pattern covers that key.
        if !left.contains(['*', '?']) && scope.covers_pattern(left) {
            assert!(scope.covers_key(left));
        }
    }
});
