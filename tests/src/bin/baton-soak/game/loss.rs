//! Loss accounting of a game: membership changes remembered as churn windows (a gap that
//! overlaps one is churn loss, else steady loss), and the check that no member of a settled
//! game stops hearing from the host or the host from a member. Runs on the game's task.

use std::time::Duration;

use super::{Game, CHURN_GRACE_US, CHURN_MEMORY_US, STALL_BOUND};
use crate::state::Check;
use crate::util::now_us;

impl Game {
    /// A membership change starts (gaps from now on are churn loss).
    pub(super) fn churn_begin(&mut self) {
        if self.churn_open.is_none() {
            self.churn_open = Some(now_us());
        }
    }

    /// The membership change is over; forgets changes too old to matter.
    pub(super) fn churn_end(&mut self) {
        let now = now_us();
        if let Some(start) = self.churn_open.take() {
            self.churn.push_back((start, now));
        }
        while self
            .churn
            .front()
            .is_some_and(|(_, end)| now.saturating_sub(*end) > CHURN_MEMORY_US)
        {
            self.churn.pop_front();
        }
    }

    /// Whether a membership change overlaps `[prev_us, now_us]` (with the grace).
    pub(super) fn in_churn(&self, prev_us: u64, now_us: u64) -> bool {
        let g = CHURN_GRACE_US;
        if self.churn_open.is_some_and(|start| now_us + g >= start) {
            return true;
        }
        self.churn
            .iter()
            .any(|(a, b)| prev_us <= b + g && now_us + g >= *a)
    }

    /// Fails for every member that has not heard from a peer it should (every member from
    /// the host, the host from every member) for [`STALL_BOUND`], counting only pairs that
    /// have both been members, under the same host, for longer than that.
    pub(super) fn check_flows(&mut self) {
        let settled = STALL_BOUND + Duration::from_secs(1);
        if self.migration.is_some() || self.host_since.elapsed() < settled {
            return;
        }
        let Some(host) = self.host else { return };
        let steady = |p: &u16| {
            self.member_since
                .get(p)
                .is_some_and(|since| since.elapsed() >= settled)
        };
        let now = now_us();
        let bound = STALL_BOUND.as_micros() as u64;
        let mut stalled = Vec::new();
        let mut pairs = 0;
        for (&peer, &uid) in self.members.iter().filter(|(p, _)| steady(p)) {
            let senders: Vec<u16> = if peer == host {
                self.members
                    .keys()
                    .copied()
                    .filter(|p| *p != host && steady(p))
                    .collect()
            } else {
                vec![host]
            };
            let Some(client) = self.clients.get(&uid) else {
                continue;
            };
            for s in senders {
                pairs += 1;
                let last = client.last_from.get(&s).copied().unwrap_or(0);
                if now.saturating_sub(last) > bound {
                    stalled.push((uid, peer, s, last));
                }
            }
        }
        self.ctx.stats.flow_checks.add(pairs);
        for (uid, peer, sender, last) in stalled {
            let ago = if last == 0 {
                "ever".to_owned()
            } else {
                format!("{} ms", now.saturating_sub(last) / 1000)
            };
            let what = format!(
                "game {}: peer {peer} has heard nothing from peer {sender} for {ago}, both members for over {settled:?}",
                self.id
            );
            self.ctx.fail(Check::Loss, what);
            if let Some(c) = self.clients.get_mut(&uid) {
                c.last_from.insert(sender, now);
            }
        }
    }
}
