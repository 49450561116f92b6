//! [`Fleet`]: the player processes of a run (this executable re-run as
//! [`PLAYER_SUBCOMMAND`](super::PLAYER_SUBCOMMAND)), one reader task per child pipe
//! forwarding lines into one bounded channel, and [`Report`], a player's report line parsed.
//!
//! The reader tasks run in the fleet's `JoinSet`; the runner consumes the channel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{LocalRelay, PLAYER_SUBCOMMAND};

/// Reports kept in flight between the pipe readers and the runner; a reader waits when full.
const OUTPUT_QUEUE: usize = 1024;

/// Longest report line kept (longer ones are cut); players print lines of about 200 bytes.
const MAX_LINE: usize = 4096;

/// How long a killed child may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

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

    /// Stops player `who` with SIGSTOP: it neither sends nor receives until killed (a host
    /// whose network was cut). [`Fleet::shutdown`] kills it like any player that does not exit.
    ///
    /// # Errors
    /// If the player does not exist or has exited, or the signal cannot be sent.
    pub fn stop(&mut self, who: usize) -> anyhow::Result<()> {
        let member = self
            .members
            .get(who)
            .ok_or_else(|| anyhow!("no player {who}"))?;
        let pid = member
            .child
            .id()
            .ok_or_else(|| anyhow!("player {who} has exited"))?;
        let pid = i32::try_from(pid).with_context(|| format!("pid of player {who}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .with_context(|| format!("stop player {who}"))?;
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
