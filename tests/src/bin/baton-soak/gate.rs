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
