//! Secrets read from files: each credential the configuration takes has a `…_file` twin naming a file (a mounted
//! Kubernetes Secret) whose contents are the value. The contents are taken verbatim, as text: no type
//! conversion and no trimming, except that one trailing line ending (`\n` or `\r\n`, what `echo` or an editor
//! adds) is dropped. So a password file holding `123456`, `true` or `  spaced  ` is exactly that string.
//!
//! Also here: how `check-config` prints those credentials (it does not).

use crate::error::ConfigError;
use std::path::{Path, PathBuf};

/// Fills `value` (named `name`) from `file` (named `file_name`) when `file` is set. Setting both is refused:
/// which one wins would be a guess.
pub(super) fn resolve(
    value: &mut Option<String>,
    file: Option<&PathBuf>,
    name: &str,
    file_name: &str,
) -> Result<(), ConfigError> {
    let Some(path) = file else {
        return Ok(());
    };
    if value.is_some() {
        return ConfigError::fail(format!(
            "{name} and {file_name} are both set; set one (the file is for a mounted Secret)"
        ));
    }
    *value = Some(read(path, file_name)?);
    Ok(())
}

/// The contents of the secret file `path`, verbatim but for one trailing line ending.
fn read(path: &Path, setting: &str) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError(format!("{setting}: cannot read {}: {e}", path.display())))?;
    let Ok(mut text) = String::from_utf8(bytes) else {
        return ConfigError::fail(format!("{setting}: {} is not UTF-8 text", path.display()));
    };
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return ConfigError::fail(format!("{setting}: {} is empty", path.display()));
    }
    Ok(text)
}

/// What `check-config` prints for a credential that is set: never the value.
pub(super) const REDACTED: &str = "<redacted>";

/// `url` with the password of its `scheme://user:password@host` part replaced by [`REDACTED`] (a URL without
/// one is returned as is).
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    format!("{scheme}://{user}:{REDACTED}{}", &rest[at..])
}

/// A Postgres connection string (`key=value …` or a `postgres://` URL) with its password replaced by
/// [`REDACTED`]; a key=value string is redacted whole when it holds a password, rather than parsed quote by quote.
pub(super) fn redact_postgres(url: &str) -> String {
    if url.contains("://") {
        redact_url(url)
    } else if url.contains("password") {
        REDACTED.to_owned()
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_verbatim_but_for_one_line_ending() {
        let dir = tempfile::tempdir().unwrap();
        for (contents, expected) in [
            ("123456", "123456"),
            ("123456\n", "123456"),
            ("true\r\n", "true"),
            ("  spaced \t\n\n", "  spaced \t\n"),
            ("0x10", "0x10"),
        ] {
            let path = dir.path().join("secret");
            std::fs::write(&path, contents).unwrap();
            let mut value = None;
            resolve(&mut value, Some(&path), "v", "v_file").unwrap();
            assert_eq!(value.as_deref(), Some(expected), "{contents:?}");
        }
    }

    #[test]
    fn a_secret_file_that_cannot_be_used_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe]).unwrap();
        for path in [missing, empty, binary] {
            let mut value = None;
            let refused = resolve(&mut value, Some(&path), "v", "v_file").unwrap_err();
            assert!(refused.0.starts_with("v_file: "), "{refused}");
        }
        let mut both = Some("x".to_owned());
        assert!(resolve(&mut both, Some(&dir.path().join("any")), "v", "v_file").is_err());
    }

    #[test]
    fn credentials_are_redacted_from_urls() {
        assert_eq!(
            redact_url("redis://user:pw@h:1/0"),
            "redis://user:<redacted>@h:1/0"
        );
        assert_eq!(redact_url("rediss://:p@ss@h:1"), "rediss://:<redacted>@h:1");
        assert_eq!(
            redact_url("redis-cluster://h:1?node=h:2"),
            "redis-cluster://h:1?node=h:2"
        );
        assert_eq!(redact_postgres("host=h password=x"), REDACTED);
        assert_eq!(redact_postgres("host=h user=app"), "host=h user=app");
        assert_eq!(
            redact_postgres("postgres://app:x@h/db"),
            "postgres://app:<redacted>@h/db"
        );
    }
}
