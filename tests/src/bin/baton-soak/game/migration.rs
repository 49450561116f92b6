//! [`Migration`]: one host loss followed on every remaining member, from `HostLost` through
//! `HostMigrated` to the new host hearing every other member rejoin, and the verdict on it
//! ([`MigrationDone`]). Plain state, fed by the game's task.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use baton_tests::player::Report;

use super::reports::alloc_id;

/// What a migrating member reported after `HostMigrated`.
#[derive(Debug, Clone)]
pub(super) struct Migrated {
    pub(super) alloc: u64,
    pub(super) new_host: u16,
    pub(super) you_are_host: bool,
    pub(super) members: Vec<u16>,
    pub(super) snapshot_from: Option<u64>,
}

/// A host loss being followed on every remaining member.
#[derive(Debug)]
pub(super) struct Migration {
    pub(super) old_host: u16,
    pub(super) old_alloc: u64,
    pub(super) reason: &'static str,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) expect_snapshot: bool,
    pub(super) remaining: BTreeMap<u64, u16>,
    pub(super) lost: HashMap<u64, Option<u16>>,
    pub(super) migrated: HashMap<u64, Migrated>,
    pub(super) rejoined: HashMap<u64, BTreeSet<u16>>,
}

/// A migration seen through.
pub(super) struct MigrationDone {
    pub(super) new_host: u16,
    pub(super) new_uid: u64,
    pub(super) alloc: u64,
    pub(super) problems: Vec<String>,
    pub(super) snapshot_from: Option<u64>,
}

impl Migration {
    /// Takes the reports that concern the migration; false for others.
    pub(super) fn take(&mut self, uid: u64, report: &Report) -> Result<bool, String> {
        if !self.remaining.contains_key(&uid) {
            return Ok(false);
        }
        match report {
            Report::HostLost {
                host,
                reason,
                elected,
            } if *host == self.old_host => {
                self.lost.insert(uid, *elected);
                if reason != self.reason {
                    return Err(format!(
                        "peer {} heard host {host} lost with reason {reason}, expected {}",
                        self.remaining[&uid], self.reason
                    ));
                }
                Ok(true)
            }
            Report::HostMigrated {
                allocation,
                new_host,
                you_are_host,
                members,
                snapshot_from,
                ..
            } => {
                self.migrated.insert(
                    uid,
                    Migrated {
                        alloc: alloc_id(allocation),
                        new_host: *new_host,
                        you_are_host: *you_are_host,
                        members: members.clone(),
                        snapshot_from: *snapshot_from,
                    },
                );
                if !self.lost.contains_key(&uid) {
                    return Err(format!(
                        "peer {} heard HostMigrated without HostLost first",
                        self.remaining[&uid]
                    ));
                }
                Ok(true)
            }
            Report::PeerRejoined { peer } => {
                self.rejoined.entry(uid).or_default().insert(*peer);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The outcome once every remaining member has migrated and the new host heard every
    /// other member rejoin; `None` while waiting.
    pub(super) fn done(&self) -> Option<MigrationDone> {
        if self.migrated.len() < self.remaining.len() {
            return None;
        }
        let mut problems = Vec::new();
        let peers: Vec<u16> = self.remaining.values().copied().collect();
        let mut sorted_peers = peers.clone();
        sorted_peers.sort_unstable();
        let hosts: BTreeSet<u16> = self.migrated.values().map(|m| m.new_host).collect();
        let allocs: BTreeSet<u64> = self.migrated.values().map(|m| m.alloc).collect();
        let claimants: Vec<u64> = self
            .migrated
            .iter()
            .filter(|(_, m)| m.you_are_host)
            .map(|(uid, _)| *uid)
            .collect();
        let new_host = *hosts.iter().next()?;
        if hosts.len() != 1 {
            problems.push(format!("members disagree on the new host: {hosts:?}"));
        }
        if allocs.len() != 1 {
            problems.push(format!(
                "members disagree on the new allocation: {allocs:x?}"
            ));
        }
        let alloc = *allocs.iter().next()?;
        if alloc == self.old_alloc {
            problems.push("the successor allocation has the old id".to_owned());
        }
        let new_uid = match claimants.as_slice() {
            [uid] if self.remaining.get(uid) == Some(&new_host) => *uid,
            _ => {
                problems.push(format!(
                    "expected exactly peer {new_host} to be told it is host; told: {:?}",
                    claimants
                        .iter()
                        .map(|u| self.remaining.get(u))
                        .collect::<Vec<_>>()
                ));
                self.remaining
                    .iter()
                    .find(|(_, p)| **p == new_host)
                    .map(|(u, _)| *u)?
            }
        };
        if !peers.contains(&new_host) {
            problems.push(format!(
                "new host {new_host} is not a remaining member {peers:?}"
            ));
        }
        // The new host hears every other member arrive, under its old id.
        let expected: BTreeSet<u16> = peers.iter().copied().filter(|p| *p != new_host).collect();
        let heard = self.rejoined.get(&new_uid).cloned().unwrap_or_default();
        if !expected.is_subset(&heard) && Instant::now() < self.deadline {
            return None;
        }
        if !expected.is_subset(&heard) {
            problems.push(format!(
                "new host {new_host} heard PeerRejoined for {heard:?}, expected {expected:?}"
            ));
        }
        for (uid, m) in &self.migrated {
            let peer = self.remaining[uid];
            let mut members = m.members.clone();
            members.sort_unstable();
            if members != sorted_peers {
                problems.push(format!(
                    "peer {peer} sees members {members:?} after the migration, expected {sorted_peers:?} (ids must not change)"
                ));
            }
            match self.lost.get(uid) {
                Some(Some(elected)) if *elected == new_host => {}
                other => problems.push(format!(
                    "peer {peer}'s last HostLost named {other:?} as elected, but {new_host} took over"
                )),
            }
        }
        let snapshot_from = self.migrated.get(&new_uid).and_then(|m| m.snapshot_from);
        Some(MigrationDone {
            new_host,
            new_uid,
            alloc,
            problems,
            snapshot_from,
        })
    }

    /// What each remaining member has reported, for a failure message.
    pub(super) fn progress(&self) -> String {
        self.remaining
            .iter()
            .map(|(uid, peer)| {
                let lost = match self.lost.get(uid) {
                    Some(e) => format!("HostLost(elected {e:?})"),
                    None => "no HostLost".to_owned(),
                };
                let migrated = match self.migrated.get(uid) {
                    Some(m) => format!("HostMigrated(host {})", m.new_host),
                    None => "no HostMigrated".to_owned(),
                };
                let rejoined = self
                    .rejoined
                    .get(uid)
                    .map(|r| format!(", PeerRejoined {r:?}"))
                    .unwrap_or_default();
                format!("peer {peer}: {lost}, {migrated}{rejoined}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}
