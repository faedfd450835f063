//! How logical keys map onto Redis keys, and the bookkeeping kept beside them.
//!
//! A key's first two segments form its group (`user:123` for `user:123`, `user:123:posts`, `user:123:likes`).
//! The group is the Redis Cluster hash tag, so a group's values and its bookkeeping share one slot and one Lua
//! script can change them atomically:
//!
//! | Redis key               | holds                                                              |
//! |-------------------------|--------------------------------------------------------------------|
//! | `{user:123}:posts`      | the value of `user:123:posts`, prefixed by the group epoch (8 B)   |
//! | `{user:123}#keys`       | set of the group's keys, as suffixes (`:posts`, ``): the index     |
//! | `{user:123}#epoch`      | 8 random bytes; a value whose prefix differs is not served         |
//! | `{user:123}#lease:posts`| the fill lease of `user:123:posts` (a holder's token)              |
//! | `{user:123}#leases`     | set of suffixes with a lease out, so a pattern can void them       |
//!
//! Keys never contain braces, and a key's remainder after its group is empty or starts with `:`, so `#…`
//! bookkeeping names can never collide with a caller's key.

/// The group tag and the remainder of `key` (empty or starting with `:`).
pub(super) fn split(key: &str) -> (&str, &str) {
    let first = key.find(':').unwrap_or(key.len());
    let second = key[(first + 1).min(key.len())..]
        .find(':')
        .map_or(key.len(), |i| first + 1 + i);
    (&key[..second], &key[second..])
}

/// `{group}`: the hash tag every Redis key of the group starts with.
pub(super) fn tag(group: &str) -> String {
    format!("{{{group}}}")
}

/// Where `key`'s value lives.
pub(super) fn value_key(key: &str) -> String {
    let (group, rest) = split(key);
    format!("{{{group}}}{rest}")
}

/// Where `key`'s fill lease lives.
pub(super) fn lease_key(key: &str) -> String {
    let (group, rest) = split(key);
    format!("{{{group}}}#lease{rest}")
}

/// The group's index of keys.
pub(super) fn index_key(group: &str) -> String {
    format!("{{{group}}}#keys")
}

/// The group's set of keys with a lease out.
pub(super) fn leases_key(group: &str) -> String {
    format!("{{{group}}}#leases")
}

/// The group's epoch.
pub(super) fn epoch_key(group: &str) -> String {
    format!("{{{group}}}#epoch")
}

/// What a Redis key found by SCAN is, in logical terms.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// The value of this key.
    Value(String),
    /// The lease of this key.
    Lease(String),
    /// Bookkeeping (index, epoch, lease set) or something not ours.
    Other,
}

/// Classifies a Redis key.
pub(super) fn classify(redis_key: &str) -> Found {
    let Some(inner) = redis_key.strip_prefix('{') else {
        return Found::Other;
    };
    let Some(close) = inner.find('}') else {
        return Found::Other;
    };
    let (group, after) = (&inner[..close], &inner[close + 1..]);
    if after.is_empty() || after.starts_with(':') {
        Found::Value(format!("{group}{after}"))
    } else if let Some(rest) = after.strip_prefix("#lease")
        && (rest.is_empty() || rest.starts_with(':'))
    {
        Found::Lease(format!("{group}{rest}"))
    } else {
        Found::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_the_first_two_segments() {
        assert_eq!(split("user:123"), ("user:123", ""));
        assert_eq!(split("user:123:posts"), ("user:123", ":posts"));
        assert_eq!(split("posts:page:1:x"), ("posts:page", ":1:x"));
        assert_eq!(value_key("user:123:posts"), "{user:123}:posts");
        assert_eq!(value_key("user:123"), "{user:123}");
        assert_eq!(lease_key("user:123:posts"), "{user:123}#lease:posts");
    }

    #[test]
    fn scan_results_map_back_to_keys() {
        assert_eq!(
            classify("{user:123}:posts"),
            Found::Value("user:123:posts".into())
        );
        assert_eq!(classify("{user:123}"), Found::Value("user:123".into()));
        assert_eq!(
            classify("{user:123}#lease:posts"),
            Found::Lease("user:123:posts".into())
        );
        assert_eq!(
            classify("{user:123}#lease"),
            Found::Lease("user:123".into())
        );
        for other in [
            "{user:123}#keys",
            "{user:123}#epoch",
            "{user:123}#leases",
            "plain",
            "{open",
        ] {
            assert_eq!(classify(other), Found::Other, "{other}");
        }
    }
}
