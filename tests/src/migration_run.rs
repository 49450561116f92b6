//! One host migration, end to end with real processes, timed: the orchestration shared by
//! `baton-demo` and `baton-migration-bench`.
//!
//! The relay runs in this process ([`LocalRelay`]); the host and its peers are game clients in
//! their own OS processes: this same executable re-run with the hidden [`PLAYER_SUBCOMMAND`]
//! (see [`player_main_if_requested`] and [`crate::player`]), so no other binary has to be built.
//!
//! Flow of [`run_migration`]:
//! 1. start the host and wait for its allocation (and its snapshot, if it uploads one);
//! 2. start the peers with the join code and wait until the host has seen each of them join;
//! 3. let everyone play for [`Scenario::settle`] (so the relay has measured each member's RTT,
//!    which the election uses);
//! 4. end the host: `close` on its stdin ([`HostEnd::Clean`]) or SIGKILL ([`HostEnd::Crash`]);
//! 5. read the reports until every remaining member has lost the host, the new host has taken
//!    over, every other member has moved, and datagrams flow both ways between the new host and
//!    each member ([`Timeline::is_complete`]);
//! 6. optionally bring the old host back with its reconnect token, as an ordinary peer;
//! 7. close every player, and kill what has not exited after a grace period.
//!
//! Clocks: players stamp each report with the wall clock in microseconds since the Unix epoch,
//! and this process stamps the moment it ends the host with the same clock, so intervals across
//! processes on one machine are comparable.
//!
//! Concurrency: one reader task per child pipe forwards lines into one bounded channel, owned
//! (with the tasks, in a `JoinSet`) by a [`Fleet`], which also owns every child process (killed
//! when dropped). The runner consumes the channel in one place. Every wait has a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use baton_relay::{Relay, RelayConfig, TlsSource};
use clap::Parser;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::player::PlayerArgs;

/// First argument that makes this executable a player process instead of the program itself.
pub const PLAYER_SUBCOMMAND: &str = "player";

/// Reports kept in flight between the pipe readers and the runner; a reader waits when full.
const OUTPUT_QUEUE: usize = 1024;

/// Longest report line kept (longer ones are cut); players print lines of about 200 bytes.
const MAX_LINE: usize = 4096;

/// How long a killed child may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// If this process was started as `<exe> player ARGS...`, runs the player described by `ARGS`
/// (the [`PlayerArgs`] command line) on a single-threaded runtime and returns its result;
/// otherwise `None`. Call it first thing in `main`.
pub fn player_main_if_requested() -> Option<anyhow::Result<()>> {
    let mut args = std::env::args_os();
    let exe = args.next()?;
    if args.next().as_deref() != Some(OsStr::new(PLAYER_SUBCOMMAND)) {
        return None;
    }
    let parsed = match PlayerArgs::try_parse_from(std::iter::once(exe).chain(args)) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    Some(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("player runtime")
            .and_then(|rt| rt.block_on(crate::player::run(parsed))),
    )
}

/// Microseconds since the Unix epoch: the clock players stamp their reports with.
pub use crate::player::now_us;

/// Settings of the in-process relay.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// A client silent this long is lost: how long a crashed host goes unnoticed.
    pub keepalive: Duration,
    /// Largest migration snapshot accepted, in bytes (at least the relay's 1 KiB minimum).
    pub max_snapshot: usize,
}

/// A relay running in this process on loopback, with a throw-away data directory for its
/// self-signed development certificate.
pub struct LocalRelay {
    relay: Option<Relay>,
    fingerprint: String,
    keepalive: Duration,
    _dir: tempfile::TempDir,
}

impl LocalRelay {
    /// Starts a relay on `127.0.0.1` (kernel-chosen port, no admin server).
    ///
    /// # Errors
    /// If a setting is out of the relay's range or the relay cannot start.
    pub async fn start(settings: RelaySettings) -> anyhow::Result<LocalRelay> {
        let dir = tempfile::tempdir().context("relay data directory")?;
        let mut config = RelayConfig::default();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin_listen = None;
        config.tls = TlsSource::SelfSigned {
            data_dir: dir.path().to_owned(),
            extra_names: Vec::new(),
        };
        config
            .set_keepalive_timeout(settings.keepalive)
            .context("keepalive")?;
        if settings.max_snapshot > config.max_snapshot() {
            config
                .set_max_snapshot(settings.max_snapshot)
                .context("snapshot size")?;
            if config.snapshot_budget() < settings.max_snapshot {
                config
                    .set_snapshot_budget(settings.max_snapshot)
                    .context("snapshot budget")?;
            }
        }
        let relay = Relay::bind(config).await.context("start the relay")?;
        let fingerprint = hex::encode(relay.fingerprint());
        Ok(LocalRelay {
            relay: Some(relay),
            fingerprint,
            keepalive: settings.keepalive,
            _dir: dir,
        })
    }

    /// The relay's QUIC address.
    pub fn addr(&self) -> SocketAddr {
        self.relay
            .as_ref()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), Relay::local_addr)
    }

    /// SHA-256 fingerprint of the relay's certificate, in hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The keepalive timeout the relay runs with.
    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    /// Stops the relay gracefully.
    pub async fn shutdown(mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
    }
}

/// How every player process plays.
#[derive(Debug, Clone, Copy)]
pub struct PlayerSettings {
    /// Datagrams per second each player sends (the game's tick rate).
    pub rate: u32,
    /// SDK keepalive interval (below the relay's keepalive timeout).
    pub keepalive: Duration,
    /// A player exits by itself after this long, whatever happens to this process.
    pub max_run: Duration,
}

/// One report line of a player (see [`crate::player`]).
#[derive(Debug, Clone)]
pub struct Report {
    /// When the player printed it, µs since the Unix epoch.
    pub t_us: u64,
    /// The event name: `ready`, `host_lost`, `host_migrated`, ...
    pub event: String,
    /// Every field of the line.
    pub fields: Map<String, Value>,
}

impl Report {
    /// Parses a report line; `None` if it is not one.
    pub fn parse(line: &str) -> Option<Report> {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
            return None;
        };
        let t_us = fields.get("t_us")?.as_u64()?;
        let event = fields.get("event")?.as_str()?.to_owned();
        Some(Report {
            t_us,
            event,
            fields,
        })
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// An unsigned integer field.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }

    /// A peer id field.
    pub fn peer(&self, key: &str) -> Option<u16> {
        self.u64(key).and_then(|v| u16::try_from(v).ok())
    }

    /// A boolean field.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.fields.get(key).and_then(Value::as_bool)
    }

    /// For a report of type `kind` (`peer_joined`, `peer_rejoined`, `peer_left`), its peer.
    pub fn peer_event(&self, kind: &str) -> Option<u16> {
        if self.event != kind {
            return None;
        }
        self.fields
            .get("peer")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
    }
}

/// What a player process said, tagged with the process (its index in the [`Fleet`]).
#[derive(Debug)]
pub enum Output {
    /// A report line on stdout.
    Report {
        /// Which process.
        who: usize,
        /// The report.
        report: Report,
    },
    /// A stdout line that is not a report, or a stderr line.
    Text {
        /// Which process.
        who: usize,
        /// The line (cut at 4 KiB).
        line: String,
    },
    /// The process closed its stdout (it exited or is exiting).
    Exited {
        /// Which process.
        who: usize,
    },
}

/// A player process.
struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: Option<u32>,
}

/// The player processes of a run: this executable re-run as players, their output merged into
/// one channel. Dropping a fleet kills every process still running.
pub struct Fleet {
    exe: PathBuf,
    relay: SocketAddr,
    fingerprint: String,
    settings: PlayerSettings,
    members: Vec<Member>,
    readers: JoinSet<()>,
    tx: mpsc::Sender<Output>,
    rx: mpsc::Receiver<Output>,
}

impl Fleet {
    /// A fleet of players for `relay`, none started yet.
    ///
    /// # Errors
    /// If the path of the current executable is unknown.
    pub fn new(relay: &LocalRelay, settings: PlayerSettings) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("path of this executable")?;
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        Ok(Fleet {
            exe,
            relay: relay.addr(),
            fingerprint: relay.fingerprint().to_owned(),
            settings,
            members: Vec::new(),
            readers: JoinSet::new(),
            tx,
            rx,
        })
    }

    /// Starts a player with `role` (`host --snapshot-bytes N`, `join CODE`, `rejoin TOKEN`)
    /// and returns its index.
    ///
    /// # Errors
    /// If the process cannot be started.
    pub fn spawn(&mut self, role: &[String]) -> anyhow::Result<usize> {
        let who = self.members.len();
        let keepalive_ms = self.settings.keepalive.as_millis().max(1);
        let mut child = Command::new(&self.exe)
            .arg(PLAYER_SUBCOMMAND)
            .arg("--relay")
            .arg(self.relay.to_string())
            .arg("--fingerprint")
            .arg(&self.fingerprint)
            .arg("--rate")
            .arg(self.settings.rate.to_string())
            .arg("--keepalive-ms")
            .arg(keepalive_ms.to_string())
            .arg("--max-secs")
            .arg(self.settings.max_run.as_secs().max(1).to_string())
            .args(role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start player {}", role.join(" ")))?;
        let stdout = child.stdout.take().context("player stdout")?;
        let stderr = child.stderr.take().context("player stderr")?;
        self.readers
            .spawn(read_lines(stdout, who, self.tx.clone(), true));
        self.readers
            .spawn(read_lines(stderr, who, self.tx.clone(), false));
        let pid = child.id();
        let stdin = child.stdin.take();
        self.members.push(Member { child, stdin, pid });
        Ok(who)
    }

    /// The process id of player `who`.
    pub fn pid(&self, who: usize) -> Option<u32> {
        self.members.get(who).and_then(|m| m.pid)
    }

    /// The next output of any player, or `None` if none comes before `deadline`.
    pub async fn next_before(&mut self, deadline: Instant) -> Option<Output> {
        // The fleet holds a sender itself, so the channel never closes; the deadline bounds it.
        tokio::time::timeout_at(deadline.into(), self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends a command line (`close`, `snapshot`) to player `who`.
    ///
    /// # Errors
    /// If its stdin is closed.
    pub async fn command(&mut self, who: usize, command: &str) -> anyhow::Result<()> {
        let stdin = self
            .members
            .get_mut(who)
            .and_then(|m| m.stdin.as_mut())
            .ok_or_else(|| anyhow!("player {who} has no stdin"))?;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .with_context(|| format!("write {command:?} to player {who}"))?;
        stdin.flush().await.context("flush player stdin")
    }

    /// Kills player `who` with SIGKILL and reaps it (within 2 s).
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub async fn kill(&mut self, who: usize) -> anyhow::Result<()> {
        let member = self
            .members
            .get_mut(who)
            .ok_or_else(|| anyhow!("no player {who}"))?;
        member
            .child
            .start_kill()
            .with_context(|| format!("kill player {who}"))?;
        let _ = tokio::time::timeout(REAP_TIMEOUT, member.child.wait()).await;
        member.stdin = None;
        Ok(())
    }

    /// Tells every player to close (then closes its stdin), waits up to `grace` for all of
    /// them to exit and kills the rest.
    pub async fn shutdown(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for member in &mut self.members {
            if let Some(mut stdin) = member.stdin.take() {
                // A player that already exited has a closed pipe: nothing to tell it.
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, stdin.write_all(b"close\n")).await;
            }
        }
        for member in &mut self.members {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, member.child.wait())
                .await
                .is_err()
            {
                let _ = member.child.start_kill();
                let _ = tokio::time::timeout(REAP_TIMEOUT, member.child.wait()).await;
            }
        }
        self.readers.abort_all();
    }
}

/// Forwards each line of a child's pipe to the fleet's channel until the pipe closes; stdout
/// lines are parsed as reports, and its end is reported as [`Output::Exited`].
async fn read_lines(
    pipe: impl tokio::io::AsyncRead + Unpin,
    who: usize,
    tx: mpsc::Sender<Output>,
    stdout: bool,
) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        let out = match Report::parse(&line) {
            Some(report) if stdout => Output::Report { who, report },
            _ => {
                if line.len() > MAX_LINE {
                    let mut cut = MAX_LINE;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                }
                Output::Text { who, line }
            }
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
    if stdout {
        let _ = tx.send(Output::Exited { who }).await;
    }
}

/// How the host ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostEnd {
    /// The host leaves cleanly (`close` on its stdin: the SDK closes the QUIC connection).
    #[default]
    Clean,
    /// The host process is killed with SIGKILL: the relay notices after its keepalive timeout.
    Crash,
}

impl fmt::Display for HostEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostEnd::Clean => "clean",
            HostEnd::Crash => "crash",
        })
    }
}

/// What a run does.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Players joining the host (the host not counted).
    pub peers: usize,
    /// How the host ends.
    pub end: HostEnd,
    /// Size of the migration snapshot the host uploads before it ends (0: none).
    pub snapshot_bytes: usize,
    /// How long everyone plays before the host ends.
    pub settle: Duration,
    /// Bring the old host back with its reconnect token after the migration.
    pub rejoin: bool,
    /// Time allowed to start the host and the peers and upload the snapshot.
    pub setup_timeout: Duration,
    /// Time allowed from the host's end to a complete migration (add the keepalive timeout
    /// for a crash).
    pub migration_timeout: Duration,
    /// Time allowed for the old host's rejoin.
    pub rejoin_timeout: Duration,
}

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

/// Something the runner reports as it goes, for a live display.
#[derive(Debug)]
pub enum Note<'a> {
    /// A player process started.
    Spawned {
        /// Its index.
        who: usize,
        /// Its role arguments.
        role: &'a [String],
        /// Its process id.
        pid: Option<u32>,
    },
    /// A player's report, with the player's peer id once known.
    Report {
        /// Which process.
        who: usize,
        /// Its peer id.
        peer: Option<u16>,
        /// Whether it is the process of the old host.
        old_host: bool,
        /// The report.
        report: &'a Report,
    },
    /// A line from a player that is not a report (stderr, mostly).
    Text {
        /// Which process.
        who: usize,
        /// Its peer id.
        peer: Option<u16>,
        /// The line.
        line: &'a str,
    },
    /// Everyone is in and playing; the host ends next.
    Playing {
        /// The join code.
        code: &'a str,
        /// The allocation.
        allocation: &'a str,
    },
    /// The host was told to close or killed, at `t_us`.
    HostEnded {
        /// How.
        end: HostEnd,
        /// When.
        t_us: u64,
    },
    /// The migration is complete.
    Migrated(&'a Timeline),
    /// The old host is being started again with its reconnect token.
    Rejoining {
        /// The token.
        token: &'a str,
        /// When.
        t_us: u64,
    },
}

/// A run in progress: the fleet, what is known so far, and the observer to tell.
struct Run<'o> {
    fleet: Fleet,
    timeline: Timeline,
    /// Peer id of each process, once it said `ready`.
    peers: Vec<Option<u16>>,
    host_who: usize,
    rejoin_who: Option<usize>,
    host_ready: Option<Report>,
    snapshot_stored: bool,
    joined_at_host: BTreeSet<u16>,
    ended: bool,
    observe: &'o mut dyn FnMut(Note<'_>),
}

impl Run<'_> {
    fn spawn(&mut self, role: Vec<String>) -> anyhow::Result<usize> {
        let who = self.fleet.spawn(&role)?;
        self.peers.push(None);
        (self.observe)(Note::Spawned {
            who,
            role: &role,
            pid: self.fleet.pid(who),
        });
        Ok(who)
    }

    /// Reads outputs until `done` holds, or fails with `what` at `deadline`.
    async fn until(
        &mut self,
        deadline: Instant,
        what: &str,
        done: impl Fn(&Run<'_>) -> bool,
    ) -> anyhow::Result<()> {
        while !done(self) {
            let Some(out) = self.fleet.next_before(deadline).await else {
                bail!("timed out waiting for {what}");
            };
            self.absorb(out)?;
        }
        Ok(())
    }

    /// Reads outputs for `period`.
    async fn drain_for(&mut self, period: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + period;
        while let Some(out) = self.fleet.next_before(deadline).await {
            self.absorb(out)?;
        }
        Ok(())
    }

    /// Takes one output into the timeline and tells the observer.
    fn absorb(&mut self, out: Output) -> anyhow::Result<()> {
        match out {
            Output::Report { who, report } => {
                self.record(who, &report);
                (self.observe)(Note::Report {
                    who,
                    peer: self.peers.get(who).copied().flatten(),
                    old_host: who == self.host_who,
                    report: &report,
                });
            }
            Output::Text { who, line } => (self.observe)(Note::Text {
                who,
                peer: self.peers.get(who).copied().flatten(),
                line: &line,
            }),
            Output::Exited { who } => {
                // Only the old host is meant to go; anyone else leaving spoils the run.
                if who != self.host_who {
                    bail!(
                        "player {who} (peer {:?}) exited during the run",
                        self.peers.get(who).copied().flatten()
                    );
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, who: usize, r: &Report) {
        let t = r.t_us;
        let peer = self.peers.get(who).copied().flatten();
        let tl = &mut self.timeline;
        match r.event.as_str() {
            "ready" => {
                if let Some(slot) = self.peers.get_mut(who) {
                    *slot = r.peer("peer");
                }
                if who == self.host_who {
                    self.host_ready = Some(r.clone());
                } else if Some(who) == self.rejoin_who {
                    if let Some(rejoin) = &mut tl.rejoin {
                        rejoin.ready_us = Some(t);
                        rejoin.peer = r.peer("peer");
                        rejoin.host = r.peer("host");
                        rejoin.allocation = r.str("allocation").map(str::to_owned);
                    }
                } else if let Some(p) = r.peer("peer") {
                    tl.members.insert(p);
                }
            }
            "snapshot_stored" if who == self.host_who => self.snapshot_stored = true,
            "closing" if who == self.host_who && self.ended => tl.host_closing_us = Some(t),
            "host_lost" => {
                if let Some(p) = peer {
                    tl.host_lost.entry(p).or_insert(t);
                }
                tl.elected = r.peer("elected").or(tl.elected);
                if let Some(reason) = r.str("reason") {
                    tl.lost_reason = Some(reason.to_owned());
                }
            }
            "host_migrated" => {
                if r.bool("you_are_host") == Some(true) {
                    tl.new_host = peer;
                    tl.new_host_ready_us = Some(t);
                    tl.new_allocation = r.str("allocation").map(str::to_owned);
                    tl.snapshot_len = r.u64("snapshot_len");
                    tl.snapshot_matches = r.bool("snapshot_matches");
                } else if let Some(p) = peer {
                    tl.moved.entry(p).or_insert(t);
                    if let Some(h) = r.peer("new_host") {
                        tl.moved_to.insert(p, h);
                    }
                }
            }
            "first_from_host" => {
                if let Some(p) = peer {
                    tl.first_from_host.entry(p).or_insert(t);
                }
            }
            "first_from_peer" => {
                if let Some(from) = r.peer("peer") {
                    if from == tl.old_host && tl.rejoin.is_some() {
                        if let Some(rejoin) = &mut tl.rejoin {
                            rejoin.first_datagram_at_new_host_us.get_or_insert(t);
                        }
                    } else {
                        tl.first_from_peer.entry(from).or_insert(t);
                    }
                }
            }
            "peer_joined" | "peer_rejoined" => {
                if who == self.host_who {
                    if let Some(p) = r.peer_event("peer_joined") {
                        self.joined_at_host.insert(p);
                    }
                } else if peer.is_some() && peer == tl.new_host {
                    if let Some(p) = r.peer_event("peer_rejoined") {
                        tl.rejoined_at_new_host.entry(p).or_insert(t);
                        if p == tl.old_host {
                            if let Some(rejoin) = &mut tl.rejoin {
                                rejoin.seen_by_new_host_us.get_or_insert(t);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Runs one host migration as described in the [module docs](self), reporting progress to
/// `observe`, and returns its timeline. Every player is closed (or killed) before it returns,
/// error or not.
///
/// # Errors
/// If a player cannot be started, a player other than the old host exits, or a phase does not
/// finish within its time allowance (the error says what was missing).
pub async fn run_migration(
    relay: &LocalRelay,
    players: PlayerSettings,
    scenario: &Scenario,
    observe: &mut dyn FnMut(Note<'_>),
) -> anyhow::Result<Timeline> {
    let mut run = Run {
        fleet: Fleet::new(relay, players)?,
        timeline: Timeline {
            end: scenario.end,
            ..Timeline::default()
        },
        peers: Vec::new(),
        host_who: 0,
        rejoin_who: None,
        host_ready: None,
        snapshot_stored: false,
        joined_at_host: BTreeSet::new(),
        ended: false,
        observe,
    };
    let result = drive(&mut run, scenario).await;
    run.fleet.shutdown(Duration::from_secs(3)).await;
    result.map(|()| run.timeline)
}

/// The phases of [`run_migration`].
async fn drive(run: &mut Run<'_>, scenario: &Scenario) -> anyhow::Result<()> {
    // 1. The host, its allocation and its snapshot.
    let setup_deadline = Instant::now() + scenario.setup_timeout;
    run.host_who = run.spawn(vec![
        "host".into(),
        "--snapshot-bytes".into(),
        scenario.snapshot_bytes.to_string(),
    ])?;
    let want_snapshot = scenario.snapshot_bytes > 0;
    run.until(setup_deadline, "the host's allocation", |r| {
        r.host_ready.is_some() && (r.snapshot_stored || !want_snapshot)
    })
    .await?;
    let ready = run.host_ready.clone().context("host ready")?;
    let code = ready.str("code").context("join code")?.to_owned();
    run.timeline.old_host = ready.peer("peer").context("host peer id")?;
    run.timeline.old_allocation = ready.str("allocation").unwrap_or_default().to_owned();
    run.timeline.old_host_token = ready.str("token").context("host token")?.to_owned();
    run.timeline.code = code.clone();

    // 2. The peers, until the host has seen every one join.
    for _ in 0..scenario.peers {
        run.spawn(vec!["join".into(), code.clone()])?;
    }
    let peers = scenario.peers;
    run.until(setup_deadline, "every peer to join", |r| {
        r.timeline.members.len() == peers
            && r.timeline
                .members
                .iter()
                .all(|p| r.joined_at_host.contains(p))
    })
    .await?;

    // 3. Play for a moment.
    let (code, allocation) = (
        run.timeline.code.clone(),
        run.timeline.old_allocation.clone(),
    );
    (run.observe)(Note::Playing {
        code: &code,
        allocation: &allocation,
    });
    run.drain_for(scenario.settle).await?;

    // 4. End the host.
    run.ended = true;
    let t_end = now_us();
    run.timeline.host_end_us = t_end;
    match scenario.end {
        HostEnd::Clean => run.fleet.command(run.host_who, "close").await?,
        HostEnd::Crash => run.fleet.kill(run.host_who).await?,
    }
    (run.observe)(Note::HostEnded {
        end: scenario.end,
        t_us: t_end,
    });

    // 5. The migration.
    let deadline = Instant::now() + scenario.migration_timeout;
    let migrated = run
        .until(deadline, "the migration", |r| r.timeline.is_complete())
        .await;
    if let Err(e) = migrated {
        bail!("{e}: missing {}", run.timeline.missing());
    }
    // A clean host's own `closing` report may still be on its way.
    if scenario.end == HostEnd::Clean && run.timeline.host_closing_us.is_none() {
        let _ = run
            .until(
                Instant::now() + Duration::from_millis(500),
                "closing",
                |r| r.timeline.host_closing_us.is_some(),
            )
            .await;
    }
    let snapshot = run.timeline.clone();
    (run.observe)(Note::Migrated(&snapshot));

    // 6. The old host comes back with its reconnect token.
    if scenario.rejoin {
        let token = run.timeline.old_host_token.clone();
        let t = now_us();
        run.timeline.rejoin = Some(RejoinTimeline {
            started_us: t,
            ..RejoinTimeline::default()
        });
        (run.observe)(Note::Rejoining {
            token: &token,
            t_us: t,
        });
        let who = run.spawn(vec!["rejoin".into(), token])?;
        run.rejoin_who = Some(who);
        run.until(
            Instant::now() + scenario.rejoin_timeout,
            "the old host's rejoin",
            |r| {
                r.timeline.rejoin.as_ref().is_some_and(|j| {
                    j.ready_us.is_some()
                        && j.seen_by_new_host_us.is_some()
                        && j.first_datagram_at_new_host_us.is_some()
                })
            },
        )
        .await?;
    }
    Ok(())
}
