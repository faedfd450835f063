//! The notice wire format, shared by the sharded notice channels and the classic pub/sub fallback.

use crate::store::contract::{Acks, Notice, Stamp};
use std::time::Duration;

/// Notices on the wire: a tag line (the tag, `@`, and when it was sent in Unix microseconds, so receivers measure
/// the delay; a strict notice adds `@writer.seq`), then one item per line (keys and patterns hold no whitespace).
/// A strict notice keeps the plain notice's tag, so replicas of earlier versions still apply it.
pub(in crate::store::redis) fn encode(notice: &Notice) -> String {
    let sent = now_us();
    match notice {
        Notice::Keys(keys) => format!("k@{sent}\n{}", keys.join("\n")),
        Notice::Pattern(pattern) => format!("p@{sent}\n{pattern}"),
        Notice::Heartbeat(replica, seq) => format!("h@{sent}\n{replica}\n{seq}"),
        Notice::StrictKeys(Stamp { writer, seq }, keys) => {
            format!("k@{sent}@{writer}.{seq}\n{}", keys.join("\n"))
        }
        Notice::StrictPattern(Stamp { writer, seq }, pattern) => {
            format!("p@{sent}@{writer}.{seq}\n{pattern}")
        }
        Notice::Acks(Acks {
            member,
            writer,
            seqs,
        }) => {
            let seqs: Vec<String> = seqs.iter().map(u64::to_string).collect();
            format!("a@{sent}\n{member}\n{writer}\n{}", seqs.join("\n"))
        }
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// How long ago a notice on the wire was sent, when it says (earlier versions did not).
pub(super) fn delay(text: &str) -> Option<Duration> {
    let sent: u64 = text.split('\n').next()?.split('@').nth(1)?.parse().ok()?;
    Some(Duration::from_micros(now_us().saturating_sub(sent)))
}

/// A notice from the wire; `None` for what is not one.
pub(in crate::store::redis) fn decode(text: &str) -> Option<Notice> {
    let mut lines = text.split('\n');
    let mut tag_line = lines.next()?.split('@');
    let tag = tag_line.next()?;
    let stamp = match tag_line.nth(1) {
        Some(stamp) => {
            let (writer, seq) = stamp.split_once('.')?;
            Some(Stamp {
                writer: writer.parse().ok()?,
                seq: seq.parse().ok()?,
            })
        }
        None => None,
    };
    match (tag, stamp) {
        ("k", None) => Some(Notice::Keys(lines.map(str::to_owned).collect())),
        ("k", Some(stamp)) => Some(Notice::StrictKeys(
            stamp,
            lines.map(str::to_owned).collect(),
        )),
        ("p", None) => Some(Notice::Pattern(lines.next()?.to_owned())),
        ("p", Some(stamp)) => Some(Notice::StrictPattern(stamp, lines.next()?.to_owned())),
        ("h", _) => Some(Notice::Heartbeat(
            lines.next()?.parse().ok()?,
            lines.next()?.parse().ok()?,
        )),
        ("a", _) => Some(Notice::Acks(Acks {
            member: lines.next()?.parse().ok()?,
            writer: lines.next()?.parse().ok()?,
            seqs: lines.map(str::parse).collect::<Result<_, _>>().ok()?,
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_survive_the_wire() {
        for notice in [
            Notice::Keys(vec!["user:1".into(), "user:2:posts".into()]),
            Notice::Pattern("user:1:*".into()),
            Notice::Heartbeat(7, 42),
            Notice::StrictKeys(Stamp { writer: 9, seq: 3 }, vec!["user:1".into()]),
            Notice::StrictPattern(Stamp { writer: 9, seq: 4 }, "user:1:*".into()),
            Notice::Acks(Acks {
                member: 5,
                writer: 9,
                seqs: vec![3, 4],
            }),
        ] {
            assert_eq!(decode(&encode(&notice)), Some(notice));
        }
        assert_eq!(decode("x\nwhat"), None);
        // Earlier versions sent no time.
        assert_eq!(
            decode("k\nuser:1"),
            Some(Notice::Keys(vec!["user:1".into()]))
        );
        assert!(delay(&encode(&Notice::Pattern("user:*".into()))).is_some());
        assert_eq!(delay("k\nuser:1"), None);
        let strict = encode(&Notice::StrictKeys(
            Stamp { writer: 9, seq: 3 },
            vec!["u:1".into()],
        ));
        assert!(delay(&strict).is_some());
    }
}
