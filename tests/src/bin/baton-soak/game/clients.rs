//! Starting and ending a game's clients: in-process player tasks and player processes (this
//! executable re-run with [`PLAYER_SUBCOMMAND`]), waiting for them to enter, telling them to
//! close or killing them, and reading a process's reports ([`read_player`]). The tasks run
//! in the game's `JoinSet`.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::{
    Client, Exit, Game, Phase, Ready, EXIT_BOUND, PLAYER_SUBCOMMAND, READY_BOUND, STATS_EVERY,
    STDERR_TAIL,
};
use baton_tests::player::{self, Command, PlayerArgs, Report, Role, Sink};

impl Game {
    /// Starts a client of the current game, in this process or its own.
    ///
    /// With a fleet, a host creates its allocation on the slot's node in turn (games spread
    /// over the nodes) and every other client enters through a random node (a join reaching a
    /// node that does not hold the allocation is redirected); every client gets the other
    /// nodes as fallback relays.
    pub(super) fn spawn_client(&mut self, role: Role, process: bool) -> anyhow::Result<u64> {
        let pick = match &role {
            Role::Host { .. } => self.slot + self.id as usize,
            _ => self.rng.below(1 << 16),
        };
        let ctx = &self.ctx;
        let Some((node, fallback_relays)) = ctx.node_at(pick) else {
            anyhow::bail!("no relay node takes new clients");
        };
        let uid = ctx.next_uid();
        let fleet = |d: std::time::Duration| {
            if ctx.fleet {
                d.as_millis() as u64
            } else {
                0
            }
        };
        let spec = PlayerArgs {
            relay: node.addr,
            fingerprint: ctx.fingerprint.clone(),
            rate: ctx.opts.rate,
            keepalive_ms: ctx.opts.keepalive_interval.as_millis() as u64,
            max_secs: ctx
                .churn_end
                .saturating_duration_since(Instant::now())
                .as_secs()
                + 60,
            game: self.id,
            uid: Some(uid),
            payload: ctx.opts.payload,
            p2p_every: ctx.opts.p2p_every,
            stats_ms: STATS_EVERY.as_millis() as u64,
            game_snapshots: true,
            credential: None,
            fallback_relays: if ctx.fleet {
                fallback_relays
            } else {
                Vec::new()
            },
            resume_window_ms: fleet(ctx.opts.resume_window),
            // A killed node is noticed by its clients when it has been silent this long.
            idle_timeout_ms: fleet(ctx.opts.keepalive_timeout),
            log: ctx
                .opts
                .player_log
                .as_ref()
                .map(|(filter, _)| filter.clone()),
            direct: false,
            netsim: None,
            role,
        };
        let mut client = Client {
            phase: Phase::Entering,
            process,
            ready: None,
            commands: None,
            child: None,
            stdin: None,
            last_from: HashMap::new(),
        };
        if process {
            let mut child = tokio::process::Command::new(&ctx.exe)
                .arg(PLAYER_SUBCOMMAND)
                .args(spec.to_args())
                .env_remove("RUST_LOG")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            ctx.stats.processes.inc();
            let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
                anyhow::bail!("player process without pipes");
            };
            client.stdin = child.stdin.take();
            client.child = Some(child);
            let tx = self.tx.clone();
            let log = self
                .ctx
                .opts
                .player_log
                .as_ref()
                .map(|(_, dir)| dir.join(format!("player-{uid}.log")));
            self.tasks.spawn(read_player(uid, stdout, stderr, tx, log));
        } else {
            let (commands, rx) = mpsc::channel(2);
            client.commands = Some(commands);
            let sink = Sink::Channel {
                uid,
                tx: self.tx.clone(),
                latency: ctx.latency.clone(),
            };
            self.tasks.spawn(async move {
                // A client that cannot enter has reported why.
                let _ = player::play(spec, sink, rx).await;
            });
        }
        self.clients.insert(uid, client);
        Ok(uid)
    }

    /// Waits (bounded) until client `uid` is in the game.
    pub(super) async fn await_ready(&mut self, uid: u64) -> Result<Ready, String> {
        let deadline = Instant::now() + READY_BOUND;
        self.pump_until(deadline, |g| {
            g.clients.get(&uid).is_none_or(|c| c.ready.is_some())
        })
        .await;
        match self.clients.get(&uid).and_then(|c| c.ready.clone()) {
            Some(Ok(ready)) => {
                if let Some(c) = self.clients.get_mut(&uid) {
                    c.phase = Phase::Member;
                }
                Ok(ready)
            }
            other => {
                self.depart(uid, Exit::Kill).await;
                if self.clients.get(&uid).is_some_and(|c| !c.process) {
                    // Its task has ended or ends at the close command; nothing more comes.
                    self.clients.remove(&uid);
                }
                Err(match other {
                    Some(Err(e)) => e,
                    _ => format!("not in the game within {READY_BOUND:?}"),
                })
            }
        }
    }

    /// Makes client `uid` leave; it is no longer a member from here on.
    pub(super) async fn depart(&mut self, uid: u64, exit: Exit) {
        if let Some(peer) = self.peer_of(uid) {
            if self.members.get(&peer) == Some(&uid) {
                self.members.remove(&peer);
            }
        }
        let Some(client) = self.clients.get_mut(&uid) else {
            return;
        };
        client.phase = Phase::Departing;
        if let Some(commands) = client.commands.take() {
            // In-process clients cannot be killed honestly (dropping a session closes it), so
            // they always close; dropping the sender closes too if the queue is full.
            let _ = commands.try_send(Command::Close);
            return;
        }
        let stdin = client.stdin.take();
        let Some(mut child) = client.child.take() else {
            return;
        };
        match exit {
            Exit::Kill => {
                let _ = child.start_kill();
            }
            Exit::Close => {
                if let Some(mut stdin) = stdin {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stdin.write_all(b"close\n"))
                            .await;
                }
            }
        }
        self.tasks.spawn(async move {
            if tokio::time::timeout(EXIT_BOUND, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        });
    }
}

/// Forwards a player process's reports to its game, then reports how it ended.
async fn read_player(
    uid: u64,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    tx: mpsc::Sender<(u64, Report)>,
    log: Option<std::path::PathBuf>,
) {
    let out = async {
        let mut lines = BufReader::new(stdout).lines();
        let mut unreadable = 0u64;
        // Ends with the process's stdout (the process is bounded by --max-secs).
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Report>(&line) {
                Ok(report) => {
                    let _ = tx.send((uid, report)).await;
                }
                Err(_) => unreadable += 1,
            }
        }
        unreadable
    };
    let err = async {
        let mut buf = Vec::new();
        // A logging player writes much more; its log is kept whole (up to 256 MiB).
        let limit = if log.is_some() { 256 << 20 } else { 1 << 20 };
        let _ = stderr.take(limit).read_to_end(&mut buf).await;
        if let Some(path) = &log {
            if let Err(e) = std::fs::write(path, &buf) {
                eprintln!("baton-soak: writing {}: {e}", path.display());
            }
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let start = text.len().saturating_sub(STDERR_TAIL);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].trim().to_owned()
    };
    let (unreadable, stderr_tail) = tokio::join!(out, err);
    let mut detail = format!("output ended ({unreadable} unreadable lines)");
    if !stderr_tail.is_empty() {
        detail.push_str(&format!("; stderr: {stderr_tail}"));
    }
    let _ = tx.send((uid, Report::Exited { detail })).await;
}
