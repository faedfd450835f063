//! Heartbeats heard per replica and channel: a replica's beat is handed to the near-cache only once every range's
//! channel delivered it, so a silent channel shows as silence.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(super) fn lock(beats: &Mutex<Beats>) -> std::sync::MutexGuard<'_, Beats> {
    beats.lock().unwrap_or_else(|e| e.into_inner())
}

/// Heartbeats per replica and channel: a beat counts as heard once every channel delivered it (or a later one).
#[derive(Default)]
pub(super) struct Beats {
    channels: Vec<String>,
    /// Per replica: the last beat per channel, the last beat handed on, and when it was last heard (to forget
    /// replicas that left).
    replicas: HashMap<u64, (HashMap<String, u64>, u64, Instant)>,
}

impl Beats {
    /// Counts beats on `channels` from now on.
    pub(super) fn follow(&mut self, channels: Vec<String>) {
        self.channels = channels;
        self.replicas.clear();
    }

    /// Records `beat` of `replica` on `channel`; answers the beat to hand on when every channel has now delivered
    /// it.
    pub(super) fn heard(&mut self, channel: &str, replica: u64, beat: u64) -> Option<u64> {
        if !self.channels.iter().any(|c| c == channel) {
            return None;
        }
        if self.replicas.len() > 256 {
            self.replicas
                .retain(|_, (_, _, at)| at.elapsed() < Duration::from_secs(30));
        }
        let (per_channel, handed_on, at) = self
            .replicas
            .entry(replica)
            .or_insert_with(|| (HashMap::new(), 0, Instant::now()));
        *at = Instant::now();
        let last = per_channel.entry(channel.to_owned()).or_default();
        *last = (*last).max(beat);
        let everywhere = self
            .channels
            .iter()
            .map(|c| per_channel.get(c).copied().unwrap_or(0))
            .min()?;
        (everywhere > *handed_on).then(|| {
            *handed_on = everywhere;
            everywhere
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_counts_once_every_channel_delivered_it() {
        let mut beats = Beats::default();
        beats.follow(vec!["a".into(), "b".into()]);
        assert_eq!(beats.heard("a", 1, 5), None);
        assert_eq!(beats.heard("b", 1, 4), Some(4));
        assert_eq!(beats.heard("b", 1, 6), Some(5));
        assert_eq!(beats.heard("a", 1, 5), None);
        assert_eq!(beats.heard("elsewhere", 1, 9), None);
        beats.follow(vec!["c".into()]);
        assert_eq!(beats.heard("a", 1, 9), None);
        assert_eq!(beats.heard("c", 1, 7), Some(7));
    }
}
