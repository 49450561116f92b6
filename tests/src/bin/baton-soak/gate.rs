//! The pause around a node event (`--nodes` of 2 or more): the node churn asks every
//! participant (each game slot and the expiry probe) to stop between two actions, drains or
//! kills a node once all have, announces which, waits until every game has checked what the
//! event did to it, and lets them go on. A game's checks are then exact: no membership change
//! of its own overlaps a relocation or a resume.
//!
//! One `watch` channel holds the state; participants read it on their own tasks (a game
//! polls it in its report pump, at least every 250 ms), the node churn waits on it. Every
//! wait is bounded by its caller.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What happens to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEventKind {
    /// `POST /v1/drain`: its games relocate (`Event::Relocated`).
    Drain,
    /// SIGKILL: its games resume through the other nodes (`Event::Resumed`).
    Kill,
}

impl NodeEventKind {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            NodeEventKind::Drain => "drain",
            NodeEventKind::Kill => "kill",
        }
    }
}

/// A node drained or killed.
#[derive(Debug, Clone)]
pub struct NodeEvent {
    /// Drain or kill.
    pub kind: NodeEventKind,
    /// The node's id.
    pub node: String,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// When it began.
    pub at: Instant,
    /// When it began, Unix µs (the clock of the players' reports).
    pub at_us: u64,
}

/// The state of the pause.
#[derive(Debug, Clone, Default)]
pub struct GateState {
    /// Node events so far (the current one while `requested`).
    pub round: u64,
    /// Whether participants are asked to pause.
    pub requested: bool,
    /// The event of this round, once under way.
    pub event: Option<NodeEvent>,
    /// Participants taking part (game slots in their churn phase, the expiry probe).
    pub participants: usize,
    /// Participants paused in this round.
    pub parked: usize,
    /// Paused participants done checking the event.
    pub done: usize,
}

/// The pause, shared by the node churn and the participants.
pub struct Gate {
    tx: watch::Sender<GateState>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            tx: watch::Sender::new(GateState::default()),
        }
    }
}

impl Gate {
    /// A participant starts taking part.
    pub fn join(&self) {
        self.tx.send_modify(|s| s.participants += 1);
    }

    /// A participant stops taking part (its churn phase is over).
    pub fn leave(&self) {
        self.tx
            .send_modify(|s| s.participants = s.participants.saturating_sub(1));
    }

    /// The round a participant that last paused in `seen` must pause for now, if any.
    pub fn pending(&self, seen: u64) -> Option<u64> {
        let s = self.tx.borrow();
        (s.requested && s.round > seen).then_some(s.round)
    }

    /// A participant pauses for `round`.
    pub fn park(&self, round: u64) {
        self.tx.send_modify(|s| {
            if s.round == round {
                s.parked += 1;
            }
        });
    }

    /// A paused participant is done with `round`'s event.
    pub fn finish(&self, round: u64) {
        self.tx.send_modify(|s| {
            if s.round == round {
                s.done += 1;
            }
        });
    }

    /// `round`'s event, once announced.
    pub fn event(&self, round: u64) -> Option<NodeEvent> {
        let s = self.tx.borrow();
        if s.round == round {
            s.event.clone()
        } else {
            None
        }
    }

    /// Whether `round` is over (participants may go on).
    pub fn released(&self, round: u64) -> bool {
        let s = self.tx.borrow();
        s.round != round || !s.requested
    }

    /// The node churn asks every participant to pause; returns the round.
    pub fn request(&self) -> u64 {
        let mut round = 0;
        self.tx.send_modify(|s| {
            s.round += 1;
            s.requested = true;
            s.event = None;
            s.parked = 0;
            s.done = 0;
            round = s.round;
        });
        round
    }

    /// The node churn says what it does to which node.
    pub fn announce(&self, event: NodeEvent) {
        self.tx.send_modify(|s| s.event = Some(event));
    }

    /// The round is over.
    pub fn release(&self) {
        self.tx.send_modify(|s| {
            s.requested = false;
            s.event = None;
        });
    }

    /// Waits until `done` holds of the state, at most `bound`; returns whether it did.
    pub async fn wait(&self, bound: Duration, done: impl FnMut(&GateState) -> bool) -> bool {
        let mut rx = self.tx.subscribe();
        let held = matches!(
            tokio::time::timeout(bound, rx.wait_for(done)).await,
            Ok(Ok(_))
        );
        held
    }

    /// Participants, paused and done, for messages.
    pub fn counts(&self) -> (usize, usize, usize) {
        let s = self.tx.borrow();
        (s.participants, s.parked, s.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> NodeEvent {
        NodeEvent {
            kind: NodeEventKind::Kill,
            node: "n1".to_owned(),
            addr: "127.0.0.1:7700".parse().unwrap(),
            at: Instant::now(),
            at_us: 1,
        }
    }

    #[tokio::test]
    async fn a_round_pauses_every_participant_once_then_releases_them() {
        let gate = Gate::default();
        gate.join();
        gate.join();
        assert_eq!(gate.pending(0), None, "nothing asked yet");
        let round = gate.request();
        assert_eq!(gate.pending(0), Some(round));
        assert_eq!(
            gate.pending(round),
            None,
            "a participant pauses once a round"
        );
        assert!(
            !gate
                .wait(Duration::from_millis(20), |s| s.parked >= s.participants)
                .await
        );
        gate.park(round);
        gate.park(round);
        assert!(
            gate.wait(Duration::from_millis(20), |s| s.parked >= s.participants)
                .await
        );
        assert!(gate.event(round).is_none());
        gate.announce(event());
        assert_eq!(gate.event(round).map(|e| e.node), Some("n1".to_owned()));
        assert!(gate.event(round + 1).is_none());
        gate.finish(round);
        assert_eq!(gate.counts(), (2, 2, 1));
        assert!(!gate.released(round));
        gate.finish(round);
        assert!(
            gate.wait(Duration::from_millis(20), |s| s.done >= s.parked)
                .await
        );
        gate.release();
        assert!(gate.released(round));
        assert_eq!(gate.pending(round), None);
        // A stale round's park or finish does not count in the next one.
        let next = gate.request();
        gate.park(round);
        gate.finish(round);
        assert_eq!(gate.counts(), (2, 0, 0));
        gate.leave();
        gate.park(next);
        assert!(
            gate.wait(Duration::from_millis(20), |s| s.parked >= s.participants)
                .await
        );
    }
}
