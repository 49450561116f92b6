//! What a player tells whoever runs it ([`Report`]), what it can be told ([`Command`]), and
//! where its reports go ([`Sink`]): a channel to a task in the same process, or JSON lines on
//! stdout, each stamped with the wall clock (`t_us`) and named by its `event` field.
//!
//! Runs on the player's task; a [`Sink::Stdout`] write blocks that task briefly.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::now_us;

/// The most latency samples one [`Report::Stats`] carries.
pub const MAX_LATENCY_SAMPLES: usize = 256;

/// `nat` of a [`Report::Stats`] that does not say.
fn unknown_nat() -> String {
    baton_client::NatKind::Unknown.as_str().to_owned()
}

/// What a player reports. On stdout, one JSON object a line with the variant's name in snake
/// case as `event` and the send time as `t_us` (µs since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    /// In the game.
    Ready {
        /// Own peer id.
        peer: u16,
        /// The host, as the session sees it.
        host: Option<u16>,
        /// Allocation id, in hex.
        allocation: String,
        /// Join code, when known.
        code: Option<String>,
        /// Reconnect token, `ALLOC.PEER.TOKEN`.
        token: String,
        /// The members, as the session sees them (self and host included).
        members: Vec<u16>,
    },
    /// Could not enter the game.
    Fatal {
        /// Why.
        error: String,
    },
    /// The host's snapshot (`--snapshot-bytes`) is stored on the relay.
    SnapshotStored {
        /// Its length as the relay acknowledged it.
        len: usize,
    },
    /// Uploading the snapshot failed.
    SnapshotFailed {
        /// Why.
        error: String,
    },
    /// Counters since the previous report.
    Stats {
        /// Datagrams handed to QUIC.
        sent: u64,
        /// Deliveries those datagrams should make (a broadcast counts once per other member).
        deliveries: u64,
        /// Well-formed datagrams received.
        received: u64,
        /// Datagrams that arrived after a later one of their flow.
        late: u64,
        /// Per sender peer id, when its latest datagram arrived (Unix µs).
        last_from: Vec<(u16, u64)>,
        /// Datagrams the relay reported dropping, by reason.
        relay_drops: Vec<(String, u64)>,
        /// SDK events dropped because the queue was full.
        dropped_events: u64,
        /// One-way latencies (µs, the sender's clock to the receiver's) of datagrams received
        /// since the last report, at most [`MAX_LATENCY_SAMPLES`]; a player process only (an
        /// in-process client records into its [`Sink::Channel`] histogram instead).
        #[serde(default)]
        latency_us: Vec<u64>,
        /// How the player's NAT maps its socket, as its session measured it through the
        /// relay's probe port (`unknown`, `endpoint_independent`, `endpoint_dependent`).
        #[serde(default = "unknown_nat")]
        nat: String,
    },
    /// Datagrams missing from one flow.
    Gap {
        /// The sender's peer id.
        sender: u16,
        /// How many.
        lost: u64,
        /// Arrival of the datagram before the gap (Unix µs).
        prev_us: u64,
        /// Arrival of the datagram after it (Unix µs).
        now_us: u64,
    },
    /// Something the relay must never do (wrong destination, wrong game, spoofed sender,
    /// corrupted or duplicated datagram, a foreign snapshot), or a send the SDK refused.
    Violation {
        /// What.
        what: String,
    },
    /// A datagram named an allocation id this client had not seen in a payload before.
    AllocSeen {
        /// The allocation id.
        alloc: u64,
        /// Who sent it.
        sender: u16,
    },
    /// After a migration, the first datagram from the new host.
    FirstFromHost {
        /// The new host.
        host: u16,
    },
    /// After a migration that made this client host, the first datagram from a member.
    FirstFromPeer {
        /// The member.
        peer: u16,
    },
    /// [`baton_client::Event::PeerJoined`].
    PeerJoined {
        /// Who.
        peer: u16,
    },
    /// [`baton_client::Event::PeerLeft`].
    PeerLeft {
        /// Who.
        peer: u16,
        /// Why (`closed`, `timed_out`, ...).
        reason: String,
    },
    /// [`baton_client::Event::HostLost`].
    HostLost {
        /// The lost host.
        host: u16,
        /// Why.
        reason: String,
        /// Who takes over.
        elected: Option<u16>,
    },
    /// [`baton_client::Event::HostMigrated`].
    HostMigrated {
        /// The successor allocation, in hex.
        allocation: String,
        /// The new host.
        new_host: u16,
        /// Whether that is this client.
        you_are_host: bool,
        /// The members as the session sees them right after the event.
        members: Vec<u16>,
        /// Length of the snapshot delivered to the new host.
        snapshot_len: Option<usize>,
        /// Whether it is what this game's hosts upload ([`crate::snapshot_bytes`], or with
        /// `--game-snapshots` a snapshot of this game).
        snapshot_matches: Option<bool>,
        /// With `--game-snapshots`: the uid of the snapshot's uploader.
        snapshot_from: Option<u64>,
    },
    /// [`baton_client::Event::PeerRejoined`].
    PeerRejoined {
        /// Who.
        peer: u16,
    },
    /// [`baton_client::Event::Resumed`]: the relay was lost and the session came back through
    /// another relay of the fleet.
    Resumed {
        /// The relay the session is connected to now.
        relay: SocketAddr,
        /// The host, as the session sees it right after.
        host: Option<u16>,
    },
    /// [`baton_client::Event::Relocated`]: the relay drained and the session moved to another
    /// node of the fleet.
    Relocated {
        /// The relay the session is connected to now.
        relay: SocketAddr,
        /// The host, as the session sees it right after.
        host: Option<u16>,
    },
    /// [`baton_client::Event::PathChanged`]: datagrams with `peer` take another path.
    PathChanged {
        /// The other member.
        peer: u16,
        /// `direct` or `relayed`.
        path: String,
        /// The path's round-trip time, in microseconds.
        rtt_us: u64,
    },
    /// [`baton_client::Event::Disconnected`]: the session ended.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// Any other event.
    #[serde(rename = "event")]
    Other {
        /// The event, as text.
        what: String,
    },
    /// A line on stdin that is no command.
    UnknownCommand {
        /// The line.
        command: String,
    },
    /// About to leave cleanly, on request.
    Closing,
    /// Left cleanly, on request or at `--max-secs`.
    Closed,
    /// (Added by whoever reads a player process) its output ended.
    Exited {
        /// Exit status and the end of its stderr.
        detail: String,
    },
}

/// What a player can be told (on stdin: one command a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `close`: leave cleanly ([`baton_client::Session::close`]) and stop.
    Close,
    /// `snapshot`: upload the host's snapshot again.
    Snapshot,
    /// `fallbacks ADDR,ADDR,...`: the fleet's nodes now, to resume through if the relay is
    /// lost ([`baton_client::Session::set_fallback_relays`]); `fallbacks` alone clears them.
    Fallbacks(Vec<SocketAddr>),
}

impl Command {
    /// The command on a line of stdin; `None` if it is none.
    pub fn parse(line: &str) -> Option<Command> {
        match line.trim().split_once(' ') {
            Some(("fallbacks", list)) => list
                .split(',')
                .filter(|a| !a.trim().is_empty())
                .map(|a| a.trim().parse().ok())
                .collect::<Option<Vec<SocketAddr>>>()
                .map(Command::Fallbacks),
            Some(_) => None,
            None => match line.trim() {
                "close" => Some(Command::Close),
                "snapshot" => Some(Command::Snapshot),
                "fallbacks" => Some(Command::Fallbacks(Vec::new())),
                _ => None,
            },
        }
    }

    /// The line (with its newline) that tells a player process this command.
    pub fn to_line(&self) -> String {
        match self {
            Command::Close => "close\n".to_owned(),
            Command::Snapshot => "snapshot\n".to_owned(),
            Command::Fallbacks(relays) => {
                let list: Vec<String> = relays.iter().map(ToString::to_string).collect();
                format!("fallbacks {}\n", list.join(","))
            }
        }
    }
}

/// Where a player's reports go.
pub enum Sink {
    /// To a task in this process; latencies go into the shared histogram.
    Channel {
        /// The client's uid, sent along with each report.
        uid: u64,
        /// The report channel.
        tx: mpsc::Sender<(u64, Report)>,
        /// One-way latency histogram, microseconds.
        latency: Arc<Mutex<Histogram<u64>>>,
    },
    /// As JSON lines on stdout (a player process).
    Stdout,
}

impl Sink {
    /// Delivers one report. A process whose parent stopped reading exits.
    pub async fn send(&self, report: Report) {
        match self {
            Sink::Channel { uid, tx, .. } => {
                // The receiving task may be gone at the end of the run; nothing to tell then.
                let _ = tx.send((*uid, report)).await;
            }
            Sink::Stdout => {
                let Ok(mut value) = serde_json::to_value(&report) else {
                    return;
                };
                if let Some(map) = value.as_object_mut() {
                    map.insert("t_us".into(), now_us().into());
                }
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{value}").and_then(|()| out.flush()).is_err() {
                    std::process::exit(3);
                }
            }
        }
    }

    /// Whether reports go to stdout (a player process).
    pub(super) fn is_stdout(&self) -> bool {
        matches!(self, Sink::Stdout)
    }

    /// Records one datagram's one-way latency (in-process clients only).
    pub(super) fn record_latency(&self, micros: u64) {
        if let Sink::Channel { latency, .. } = self {
            if let Ok(mut h) = latency.lock() {
                let _ = h.record(micros.max(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_back_from_their_lines() {
        let fallbacks = Command::Fallbacks(vec![
            "127.0.0.1:7700".parse().unwrap(),
            "[::1]:7701".parse().unwrap(),
        ]);
        for command in [
            Command::Close,
            Command::Snapshot,
            fallbacks,
            Command::Fallbacks(Vec::new()),
        ] {
            assert_eq!(Command::parse(&command.to_line()), Some(command));
        }
        assert_eq!(Command::parse("fallbacks nonsense"), None);
        assert_eq!(Command::parse("dance"), None);
    }

    #[test]
    fn reports_serialise_and_commands_parse() {
        let report = Report::HostLost {
            host: 0,
            reason: "timed_out".into(),
            elected: Some(2),
        };
        let line = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), report);
        // As a player process prints them: stamped, and named by `event`.
        let stamped = r#"{"event":"closed","t_us":5}"#;
        assert_eq!(
            serde_json::from_str::<Report>(stamped).unwrap(),
            Report::Closed
        );
        let resumed = Report::Resumed {
            relay: "127.0.0.1:7700".parse().unwrap(),
            host: Some(2),
        };
        let line = serde_json::to_string(&resumed).unwrap();
        assert!(line.contains(r#""event":"resumed""#), "{line}");
        assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), resumed);
        let other = serde_json::to_value(Report::Other { what: "x".into() }).unwrap();
        assert_eq!(other["event"], "event");
        assert_eq!(Command::parse("close\n"), Some(Command::Close));
        assert_eq!(Command::parse(" snapshot"), Some(Command::Snapshot));
        assert_eq!(Command::parse("dance"), None);
    }
}
