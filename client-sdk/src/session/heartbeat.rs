//! The host's heartbeat (SPEC section 11.1): while this session hosts its allocation, the relay
//! treats it as lost after the allocation's host-loss timeout without a datagram from it. So
//! every sixth of that timeout a task of its own checks whether the session sent any UDP
//! datagram on its relay connection since the last check (game traffic, acknowledgements,
//! quinn's keepalive), and if it did not, sends an empty datagram: a heartbeat, which the relay
//! drops. A session that is not host sends none.
//!
//! Its own task on the runtime, so it keeps beating while the game's own task is busy (a
//! blocked game loop, a scene load) as long as the runtime's worker threads run. The decision
//! is [`Beat`], sans IO; [`run`] feeds it quinn's counters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::shared::{lock, LinkState, Shared};

/// Heartbeats per host-loss timeout: six may be lost in a row before a live host is lost.
pub(crate) const BEATS_PER_TIMEOUT: u32 = 6;

/// The shortest interval between checks, whatever the timeout.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The interval between checks for host-loss timeout `timeout`.
pub(crate) fn interval(timeout: Duration) -> Duration {
    (timeout / BEATS_PER_TIMEOUT).max(MIN_INTERVAL)
}

/// Decides at each check whether to send a heartbeat.
#[derive(Debug, Default)]
pub(crate) struct Beat {
    /// The connection generation and UDP datagrams sent on it as of the last check, counting
    /// the heartbeat sent then; `None` when the last check was not as host.
    last: Option<(u64, u64)>,
}

impl Beat {
    /// A check: whether this session `hosts` now, on connection `generation`, which has sent
    /// `sent` UDP datagrams. Returns whether to send a heartbeat now. A new host, or a new
    /// connection, beats at once.
    pub(crate) fn check(&mut self, hosts: bool, generation: u64, sent: u64) -> bool {
        if !hosts {
            self.last = None;
            return false;
        }
        let quiet = match self.last {
            Some((g, s)) if g == generation => sent <= s,
            // A new host, or a new connection: beat at once.
            _ => true,
        };
        // The heartbeat about to be sent moves the count by one; anything beyond that by the
        // next check is other traffic, which proves the host alive by itself.
        self.last = Some((generation, if quiet { sent + 1 } else { sent }));
        quiet
    }
}

/// The heartbeat task: runs until the session ends.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut beat = Beat::default();
    loop {
        let timeout = lock(&shared.role).host_loss_timeout;
        tokio::time::sleep(interval(timeout)).await;
        let link = shared.link();
        match link.state {
            LinkState::Ended => return,
            LinkState::Resuming => continue,
            LinkState::Up => {}
        }
        let sent = link.conn.stats().udp_tx.datagrams;
        if beat.check(shared.watched_as_host(), link.generation, sent) {
            // Best effort: a full send buffer means datagrams are leaving anyway.
            let _ = link.conn.send_datagram(Bytes::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sixth_of_the_timeout() {
        assert_eq!(
            interval(Duration::from_millis(1500)),
            Duration::from_millis(250)
        );
        assert_eq!(interval(Duration::from_millis(12)), MIN_INTERVAL);
    }

    #[test]
    fn beats_only_as_host_and_only_when_quiet() {
        let mut beat = Beat::default();
        // Not host: never.
        assert!(!beat.check(false, 0, 10));
        assert!(!beat.check(false, 0, 10));
        // Became host: at once, then whenever nothing else was sent.
        assert!(beat.check(true, 0, 10));
        // Only our heartbeat left since: quiet again.
        assert!(beat.check(true, 0, 11));
        // Game traffic since: no heartbeat needed.
        assert!(!beat.check(true, 0, 30));
        assert!(beat.check(true, 0, 30));
        // Lost the host role: stops.
        assert!(!beat.check(false, 0, 31));
        // A new connection (after a resume) is another count: beats at once.
        assert!(beat.check(true, 0, 40));
        assert!(beat.check(true, 1, 3));
        assert!(!beat.check(true, 1, 9));
    }
}
