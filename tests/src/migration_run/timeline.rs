//! What a migration run measured: [`Timeline`] (every timestamp, per member), its checks
//! ([`Timeline::is_complete`], [`Timeline::anomalies`]) and its intervals ([`Figures`]).
//!
//! Plain data, filled in by the runner's task from the players' reports.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::HostEnd;

/// What happened to the old host coming back with its reconnect token.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RejoinTimeline {
    /// When its new process was started.
    pub started_us: u64,
    /// When it was in (its `ready` report).
    pub ready_us: Option<u64>,
    /// The peer id it got back.
    pub peer: Option<u16>,
    /// The host it found.
    pub host: Option<u16>,
    /// The allocation it landed in.
    pub allocation: Option<String>,
    /// When the new host was told it rejoined.
    pub seen_by_new_host_us: Option<u64>,
    /// When the new host got its first datagram.
    pub first_datagram_at_new_host_us: Option<u64>,
}

/// Every timestamp of one migration (µs since the Unix epoch), keyed by peer id where it is
/// per member.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    /// How the host ended.
    pub end: HostEnd,
    /// The old host's peer id.
    pub old_host: u16,
    /// The allocation before the migration.
    pub old_allocation: String,
    /// The join code.
    pub code: String,
    /// The old host's reconnect token (`ALLOC.PEER.TOKEN`).
    pub old_host_token: String,
    /// Peer ids of the members that stay (everyone but the old host).
    pub members: BTreeSet<u16>,
    /// When this process told the host to close or killed it.
    pub host_end_us: u64,
    /// On a clean exit, when the host itself began to close (its `closing` report).
    pub host_closing_us: Option<u64>,
    /// When each member heard that the host was lost (its first `host_lost`).
    pub host_lost: BTreeMap<u16, u64>,
    /// The reason the relay gave.
    pub lost_reason: Option<String>,
    /// The member elected (by the last `host_lost` heard).
    pub elected: Option<u16>,
    /// The member that took over.
    pub new_host: Option<u16>,
    /// When the new host had taken over (its `host_migrated`, after the snapshot arrived).
    pub new_host_ready_us: Option<u64>,
    /// The successor allocation.
    pub new_allocation: Option<String>,
    /// Size of the snapshot the new host got.
    pub snapshot_len: Option<u64>,
    /// Whether it was byte for byte the one the old host uploaded.
    pub snapshot_matches: Option<bool>,
    /// When each other member was moved (its `host_migrated`).
    pub moved: BTreeMap<u16, u64>,
    /// The new host each other member was told of.
    pub moved_to: BTreeMap<u16, u16>,
    /// When each other member got its first datagram from the new host.
    pub first_from_host: BTreeMap<u16, u64>,
    /// When the new host got its first datagram from each other member.
    pub first_from_peer: BTreeMap<u16, u64>,
    /// When the new host was told each member rejoined (moved with it or came back).
    pub rejoined_at_new_host: BTreeMap<u16, u64>,
    /// The old host coming back, if the scenario asked for it.
    pub rejoin: Option<RejoinTimeline>,
}

/// The latest of `times`; `None` if any is missing or there are none.
fn latest(mut times: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    times
        .try_fold(None, |acc: Option<u64>, t| {
            t.map(|t| Some(acc.map_or(t, |a| a.max(t))))
        })
        .flatten()
}

/// Microseconds between two timestamps, as milliseconds (negative if `to` is earlier).
fn ms(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1000.0
}

impl Timeline {
    /// The members other than the new host.
    fn others(&self) -> impl Iterator<Item = u16> + '_ {
        let new_host = self.new_host;
        self.members
            .iter()
            .copied()
            .filter(move |p| Some(*p) != new_host)
    }

    /// When the host ended: on a clean exit, when the host began to close (if it said so),
    /// else when this process told it to close or killed it.
    pub fn end_us(&self) -> u64 {
        self.host_closing_us.unwrap_or(self.host_end_us)
    }

    /// When the loss was detected: the first member to hear of it.
    pub fn detected_us(&self) -> Option<u64> {
        self.host_lost.values().copied().min()
    }

    /// When every other member had been moved to the successor allocation (`None` until
    /// then, or if there is no other member).
    pub fn all_moved_us(&self) -> Option<u64> {
        latest(self.others().map(|p| self.moved.get(&p).copied()))
    }

    /// When datagrams had flowed both ways between the new host and every other member:
    /// the last of every member's first datagram from the new host and the new host's first
    /// from every member (`None` until then, or if there is no other member).
    pub fn all_exchanging_us(&self) -> Option<u64> {
        latest(self.others().flat_map(|p| {
            [
                self.first_from_host.get(&p).copied(),
                self.first_from_peer.get(&p).copied(),
            ]
        }))
    }

    /// Whether the migration is complete: every member heard of the loss, the new host took
    /// over, every other member moved and exchanged datagrams with it.
    pub fn is_complete(&self) -> bool {
        self.new_host.is_some()
            && self.new_host_ready_us.is_some()
            && self.members.iter().all(|p| self.host_lost.contains_key(p))
            && self.others().all(|p| {
                self.moved.contains_key(&p)
                    && self.first_from_host.contains_key(&p)
                    && self.first_from_peer.contains_key(&p)
            })
    }

    /// What is still missing for [`Timeline::is_complete`], for error messages.
    pub fn missing(&self) -> String {
        let mut missing = Vec::new();
        let lost: Vec<_> = self
            .members
            .iter()
            .filter(|p| !self.host_lost.contains_key(p))
            .collect();
        if !lost.is_empty() {
            missing.push(format!("host_lost at {lost:?}"));
        }
        if self.new_host_ready_us.is_none() {
            missing.push(format!(
                "the new host (elected {:?}) taking over",
                self.elected
            ));
        }
        for (what, map) in [
            ("moved", &self.moved),
            ("first_from_host", &self.first_from_host),
            ("first_from_peer", &self.first_from_peer),
        ] {
            let absent: Vec<_> = self.others().filter(|p| !map.contains_key(p)).collect();
            if !absent.is_empty() {
                missing.push(format!("{what} for {absent:?}"));
            }
        }
        missing.join(", ")
    }

    /// The run's intervals in milliseconds.
    pub fn figures(&self) -> Figures {
        let end = self.end_us();
        let detected = self.detected_us();
        let since = |t: Option<u64>| detected.zip(t).map(|(d, t)| ms(d, t));
        Figures {
            end_to_detected: detected.map(|d| ms(end, d)),
            detected_to_new_host: since(self.new_host_ready_us),
            detected_to_all_moved: since(self.all_moved_us()),
            detected_to_exchanging: since(self.all_exchanging_us()),
            end_to_exchanging: self.all_exchanging_us().map(|t| ms(end, t)),
        }
    }

    /// Consistency problems: what should hold after every migration (peer ids unchanged,
    /// everyone on the same new host, the snapshot intact) but does not.
    pub fn anomalies(&self, snapshot_bytes: usize) -> Vec<String> {
        let mut found = Vec::new();
        if self.elected != self.new_host {
            found.push(format!(
                "elected {:?} but {:?} took over",
                self.elected, self.new_host
            ));
        }
        for (peer, host) in &self.moved_to {
            if Some(*host) != self.new_host {
                found.push(format!("peer {peer} was moved to host {host}"));
            }
        }
        let heard: BTreeSet<u16> = self.first_from_peer.keys().copied().collect();
        let expected: BTreeSet<u16> = self.others().collect();
        if !heard.is_subset(&expected) {
            found.push(format!(
                "new host heard from {heard:?}, expected {expected:?}"
            ));
        }
        if snapshot_bytes > 0 {
            let len = self.snapshot_len.and_then(|l| usize::try_from(l).ok());
            if len != Some(snapshot_bytes) || self.snapshot_matches != Some(true) {
                found.push(format!(
                    "snapshot: {len:?} bytes (matches: {:?}), {snapshot_bytes} uploaded",
                    self.snapshot_matches
                ));
            }
        }
        if let Some(rejoin) = &self.rejoin {
            if rejoin.peer != Some(self.old_host) || rejoin.host != self.new_host {
                found.push(format!(
                    "old host rejoined as {:?} under host {:?}",
                    rejoin.peer, rejoin.host
                ));
            }
        }
        found
    }
}

/// The intervals of one run, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Figures {
    /// Host's end to the first member hearing it was lost.
    pub end_to_detected: Option<f64>,
    /// Detection to the new host having taken over (snapshot received).
    pub detected_to_new_host: Option<f64>,
    /// Detection to every other member moved.
    pub detected_to_all_moved: Option<f64>,
    /// Detection to datagrams flowing both ways between the new host and every member.
    pub detected_to_exchanging: Option<f64>,
    /// Host's end to datagrams flowing again: the outage the game sees.
    pub end_to_exchanging: Option<f64>,
}
