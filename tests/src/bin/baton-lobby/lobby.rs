//! The lobby's core, shared by both event sources: parse an event, drop it if its id was
//! already seen, print it as one line, track membership and, when asked, choose the next host.
//!
//! Both sources may run at once (webhooks and the event stream carry the same events with the
//! same ids), so deduplication is by the event's `id` from the body: the `Baton-Event-Id`
//! header is not covered by the signature and is never trusted.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, PoisonError};

use baton_relay::hooks::{Gap, LobbyEvent, LobbyEventKind};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::Shutdown;

/// Event ids remembered for deduplication. Larger than the relay's default webhook queue and
/// replay buffer (10,000 events each), so any event the relay can deliver again is still
/// remembered when it comes back; bounded so a long-running lobby does not grow.
pub const DEDUP_WINDOW: usize = 65_536;
/// Allocations whose membership is tracked for elections at once. A lobby that missed an
/// `allocation.closed` (a replay gap) would otherwise keep that allocation forever.
pub const MAX_TRACKED: usize = 100_000;

/// Where an event came from (shown in text output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A signed webhook POST.
    Webhook,
    /// The admin server's event stream.
    Stream,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Stream => "stream",
        }
    }
}

/// How events are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<id> <type> allocation=<id> join_code=<code> <field>=<value>... via=<source>`.
    Text,
    /// The event's JSON object, one per line, exactly as the relay sent it.
    Json,
}

/// What [`Lobby::accept`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// First time seen: printed and processed.
    New,
    /// Already seen (a redelivery, or the other source was faster): ignored.
    Duplicate,
}

/// An event body that is not a lobby event at all (authentic but unreadable).
#[derive(Debug)]
pub struct InvalidEvent(String);

impl std::fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidEvent {}

/// A request to make `peer` the next host of `allocation` (see [`crate::elect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    /// The migrating allocation, 16 hex digits.
    pub allocation: String,
    /// The member to elect.
    pub peer: u16,
}

/// The lobby: shared by the webhook handler and the stream task.
#[derive(Debug)]
pub struct Lobby {
    state: Mutex<State>,
    format: Format,
    exit_after: Option<u64>,
    shutdown: Shutdown,
    elections: Option<mpsc::Sender<Election>>,
}

#[derive(Debug, Default)]
struct State {
    seen: SeenIds,
    printed: u64,
    rooms: Rooms,
}

impl Lobby {
    /// A lobby printing in `format`, triggering `shutdown` after `exit_after` new events, and
    /// sending elections to `elections` when it elects hosts itself.
    pub fn new(
        format: Format,
        exit_after: Option<u64>,
        shutdown: Shutdown,
        elections: Option<mpsc::Sender<Election>>,
    ) -> Self {
        Lobby {
            state: Mutex::new(State::default()),
            format,
            exit_after,
            shutdown,
            elections,
        }
    }

    /// Takes one event body (JSON, already authenticated by its source). Unknown event types
    /// are printed and acknowledged like the others: refusing them would make the relay retry
    /// them forever and hold up every later event.
    pub fn accept(&self, source: Source, body: &[u8]) -> Result<Accepted, InvalidEvent> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| InvalidEvent(format!("event is not JSON: {e}")))?;
        let Some(id) = value.get("id").and_then(Value::as_u64) else {
            return Err(InvalidEvent("event has no numeric id".into()));
        };
        let Some(kind) = value.get("type").and_then(Value::as_str) else {
            return Err(InvalidEvent("event has no type".into()));
        };
        let line = match self.format {
            Format::Json => json_line(body, &value),
            Format::Text => text_line(source, id, kind, &value),
        };
        // Typed only for elections. A type this relay version does not know parses as `None`;
        // it is still printed.
        let typed = self
            .elections
            .as_ref()
            .and_then(|_| serde_json::from_value::<LobbyEvent>(value.clone()).ok());

        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.seen.insert(id) {
            debug!(id, via = source.as_str(), "duplicate event ignored");
            return Ok(Accepted::Duplicate);
        }
        // Printed under the lock, so lines come out in the order events were accepted.
        print_line(&line);
        state.printed += 1;
        if let (Some(event), Some(elections)) = (&typed, &self.elections) {
            if let Some(election) = state.rooms.observe(event) {
                if elections.try_send(election.clone()).is_err() {
                    warn!(
                        allocation = %election.allocation,
                        peer = election.peer,
                        "election queue full; relay's choice stands"
                    );
                }
            }
        }
        let done = self.exit_after.is_some_and(|n| state.printed >= n);
        drop(state);
        if done {
            info!(events = self.exit_after, "--exit-after reached; stopping");
            self.shutdown.trigger();
        }
        Ok(Accepted::New)
    }

    /// Reports a `replay.gap` from the event stream: events between `after` and `next` were
    /// missed (the lobby was away longer than the relay's replay buffer). A real lobby would
    /// now resynchronise from `GET /v1/allocations`.
    pub fn gap(&self, data: &str) {
        let gap: Option<Gap> = serde_json::from_str(data).ok();
        warn!(
            after = gap.map(|g| g.after),
            next = gap.map(|g| g.next),
            "events were missed; resynchronise from GET /v1/allocations"
        );
        let line = match self.format {
            Format::Json => {
                let value = serde_json::from_str(data).unwrap_or_else(|_| data.into());
                json_line(data.as_bytes(), &value)
            }
            Format::Text => format!("gap {data}"),
        };
        let _state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        print_line(&line);
    }
}

/// The body itself when it is one line (the relay sends compact JSON), else re-serialized.
fn json_line(body: &[u8], value: &Value) -> String {
    match std::str::from_utf8(body) {
        Ok(text) if !text.contains(['\n', '\r']) => text.trim().to_owned(),
        _ => value.to_string(),
    }
}

/// `<id> <type> allocation=.. join_code=.. <other fields>.. via=<source>`.
fn text_line(source: Source, id: u64, kind: &str, value: &Value) -> String {
    let mut line = format!("{id} {kind}");
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("-");
    let _ = write!(
        line,
        " allocation={} join_code={}",
        field("allocation"),
        field("join_code")
    );
    if let Some(object) = value.as_object() {
        let common = ["id", "time_ms", "allocation", "join_code", "type"];
        for (name, v) in object.iter().filter(|(k, _)| !common.contains(&k.as_str())) {
            match v {
                Value::String(s) => {
                    let _ = write!(line, " {name}={s}");
                }
                other => {
                    let _ = write!(line, " {name}={other}");
                }
            }
        }
    }
    let _ = write!(line, " via={}", source.as_str());
    line
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        warn!(cause = %err, "cannot write to stdout");
    }
}

/// The last [`DEDUP_WINDOW`] event ids, oldest forgotten first.
#[derive(Debug, Default)]
struct SeenIds {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl SeenIds {
    /// `true` if `id` is new (and is now remembered).
    fn insert(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > DEDUP_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// Membership of each allocation, learned from events, for the lobby's own elections.
#[derive(Debug, Default)]
struct Rooms {
    rooms: HashMap<String, Room>,
}

#[derive(Debug, Default)]
struct Room {
    /// Members now connected, host included.
    members: BTreeSet<u16>,
    /// Members already elected during the current migration (by the relay or by us): a
    /// member that missed its deadline is not chosen again, so elections cannot loop.
    tried: BTreeSet<u16>,
}

impl Rooms {
    /// Updates membership with `event`; returns the election to make, if any.
    ///
    /// On `host.disconnected` the lobby names the lowest remaining peer id at once: with a
    /// lobby election window configured on the relay (`--lobby-election-window`) the relay
    /// waits for exactly this. Without one the relay has already elected in the same step;
    /// then the lobby also checks the `host.elected` that follows (`by: relay`) and overrides
    /// a choice that is not the lowest while the allocation is still migrating. Its own
    /// choice comes back as `host.elected` with `by: lobby`, which is ignored.
    fn observe(&mut self, event: &LobbyEvent) -> Option<Election> {
        let alloc = &event.allocation;
        if !self.rooms.contains_key(alloc) && self.rooms.len() >= MAX_TRACKED {
            if !matches!(event.kind, LobbyEventKind::AllocationClosed { .. }) {
                warn!(allocation = %alloc, "too many allocations tracked; not electing for it");
            }
            return None;
        }
        match &event.kind {
            LobbyEventKind::AllocationCreated {} => {
                self.rooms.entry(alloc.clone()).or_default();
            }
            LobbyEventKind::PeerJoined { peer, .. } => {
                self.rooms
                    .entry(alloc.clone())
                    .or_default()
                    .members
                    .insert(*peer);
            }
            LobbyEventKind::PeerLeft { peer, .. } => {
                if let Some(room) = self.rooms.get_mut(alloc) {
                    room.members.remove(peer);
                }
            }
            LobbyEventKind::HostDisconnected { host, .. } => {
                let room = self.rooms.get_mut(alloc)?;
                room.members.remove(host);
                let lowest = room
                    .members
                    .iter()
                    .copied()
                    .find(|p| !room.tried.contains(p))?;
                room.tried.insert(lowest);
                return Some(Election {
                    allocation: alloc.clone(),
                    peer: lowest,
                });
            }
            LobbyEventKind::HostElected { host, by } => {
                let room = self.rooms.get_mut(alloc)?;
                room.tried.insert(*host);
                if by != "relay" {
                    return None;
                }
                let lowest = room
                    .members
                    .iter()
                    .copied()
                    .find(|p| !room.tried.contains(p) || p == host)?;
                if lowest == *host {
                    return None;
                }
                room.tried.insert(lowest);
                return Some(Election {
                    allocation: alloc.clone(),
                    peer: lowest,
                });
            }
            LobbyEventKind::AllocationMigrated { from, to, .. } => {
                let mut room = self.rooms.remove(from).unwrap_or_default();
                room.tried.clear();
                self.rooms.insert(to.clone(), room);
            }
            LobbyEventKind::AllocationClosed { .. } => {
                self.rooms.remove(alloc);
            }
            // Types added to the relay later change no membership here.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: LobbyEventKind) -> LobbyEvent {
        LobbyEvent {
            id: 1,
            node: None,
            time_ms: 0,
            allocation: "00000000000000aa".into(),
            join_code: "BCDF78".into(),
            kind,
        }
    }

    fn elected(host: u16, by: &str) -> LobbyEvent {
        event(LobbyEventKind::HostElected {
            host,
            by: by.into(),
        })
    }

    #[test]
    fn dedup_window_is_bounded_and_remembers_recent_ids() {
        let mut seen = SeenIds::default();
        assert!(seen.insert(1));
        assert!(!seen.insert(1));
        for id in 2..=(DEDUP_WINDOW as u64 + 1) {
            assert!(seen.insert(id));
        }
        assert_eq!(seen.set.len(), DEDUP_WINDOW);
        assert!(seen.insert(1), "the oldest id was forgotten");
        assert!(!seen.insert(DEDUP_WINDOW as u64 + 1));
    }

    #[test]
    fn overrides_the_relay_with_the_lowest_remaining_peer_once() {
        let mut rooms = Rooms::default();
        rooms.observe(&event(LobbyEventKind::AllocationCreated {}));
        for peer in 0..4 {
            rooms.observe(&event(LobbyEventKind::peer_joined(
                baton_protocol::PeerId(peer),
                None,
            )));
        }
        rooms.observe(&event(LobbyEventKind::PeerLeft {
            peer: 1,
            reason: "closed".into(),
        }));
        rooms.observe(&event(LobbyEventKind::PeerLeft {
            peer: 0,
            reason: "closed".into(),
        }));
        // The lowest remaining is 2: named as soon as the host is lost.
        let election = rooms.observe(&event(LobbyEventKind::HostDisconnected {
            host: 0,
            reason: "closed".into(),
        }));
        assert_eq!(
            election,
            Some(Election {
                allocation: "00000000000000aa".into(),
                peer: 2
            })
        );
        // The relay had already picked 3 (no window): 2 is named already, not again.
        assert_eq!(rooms.observe(&elected(3, "relay")), None);
        // Our own choice coming back is not acted on.
        assert_eq!(rooms.observe(&elected(2, "lobby")), None);
        // 2 missed its deadline and the relay moved on to 3: 2 is not chosen again.
        assert_eq!(rooms.observe(&elected(3, "relay")), None);
    }

    #[test]
    fn names_the_lowest_when_the_host_is_lost_and_forgets_closed_rooms() {
        let mut rooms = Rooms::default();
        for peer in 0..3 {
            rooms.observe(&event(LobbyEventKind::peer_joined(
                baton_protocol::PeerId(peer),
                None,
            )));
        }
        assert_eq!(
            rooms.observe(&event(LobbyEventKind::HostDisconnected {
                host: 0,
                reason: "timed_out".into(),
            })),
            Some(Election {
                allocation: "00000000000000aa".into(),
                peer: 1
            })
        );
        assert_eq!(rooms.observe(&elected(1, "relay")), None);
        rooms.observe(&event(LobbyEventKind::AllocationClosed {
            reason: "migration_failed".into(),
        }));
        assert!(rooms.rooms.is_empty());
    }

    #[test]
    fn text_lines_carry_every_field() {
        let value = serde_json::json!({"id": 5, "time_ms": 1, "allocation": "00000000000000aa",
            "join_code": "BCDF78", "type": "peer.left", "peer": 2, "reason": "kicked"});
        let line = text_line(Source::Webhook, 5, "peer.left", &value);
        assert_eq!(
            line,
            "5 peer.left allocation=00000000000000aa join_code=BCDF78 peer=2 reason=kicked via=webhook"
        );
    }
}
