//! `baton-demo`: watch a host migration happen.
//!
//! ```text
//! cargo run --release -p baton-tests --bin baton-demo             # the host leaves cleanly
//! cargo run --release -p baton-tests --bin baton-demo -- --crash  # the host is SIGKILLed
//! ```
//!
//! Starts a relay in this process, then a host and three peers, each a separate OS process
//! (this executable re-run as a player, see `baton_tests::player`), waits until everyone is
//! playing, and ends the host: `close` on its stdin, or SIGKILL with `--crash` (the relay then
//! notices after its keepalive timeout, 2 s here so it is watchable). It prints the migration
//! as it happens, each step timed from the host's end: every peer hearing the host is lost and
//! who is elected, the new host taking over with the snapshot, each peer moving, and datagrams
//! flowing both ways between the new host and every peer. Finally the old host comes back with
//! its reconnect token, as an ordinary peer under its old peer id.
//!
//! Every wait is bounded; the players are closed (or killed) when the demo ends, Ctrl-C
//! included.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_relay::cli::parse_duration;
use baton_tests::migration_run::{
    run_migration, tool_main, HostEnd, LocalRelay, Note, PlayerSettings, RelaySettings, Report,
    Scenario, Timeline,
};
use clap::Parser;

/// Command line of the demo.
#[derive(Debug, Parser)]
#[command(about = "Watch a Baton host migration: a relay, a host and three peer processes")]
struct Args {
    /// Kill the host with SIGKILL instead of letting it leave cleanly.
    #[arg(long)]
    crash: bool,
    /// Peers joining the host.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    peers: u16,
    /// The relay's keepalive timeout: how long a crashed host goes unnoticed.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    keepalive: Duration,
    /// Datagrams per second each player sends.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rate: u32,
    /// Size of the migration snapshot the host uploads, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    snapshot_bytes: usize,
    /// How long everyone plays before the host ends.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    play: Duration,
    /// Do not bring the old host back at the end.
    #[arg(long)]
    no_rejoin: bool,
}

fn main() -> anyhow::Result<()> {
    tool_main(|| demo(Args::parse()))
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let relay = LocalRelay::start(RelaySettings {
        keepalive: args.keepalive,
        max_snapshot: args.snapshot_bytes,
        host_loss_timeout: None,
    })
    .await?;
    let end = if args.crash {
        HostEnd::Crash
    } else {
        HostEnd::Clean
    };
    println!(
        "relay: in this process on {} (keepalive timeout {}), certificate fingerprint {}",
        relay.addr(),
        fmt_duration(relay.keepalive()),
        relay.fingerprint()
    );
    let players = PlayerSettings {
        rate: args.rate,
        keepalive: (args.keepalive / 4).min(Duration::from_secs(2)),
        max_run: Duration::from_secs(120),
    };
    let scenario = Scenario {
        peers: usize::from(args.peers),
        end,
        snapshot_bytes: args.snapshot_bytes,
        settle: args.play,
        rejoin: !args.no_rejoin,
        setup_timeout: Duration::from_secs(60),
        migration_timeout: args.keepalive + Duration::from_secs(20),
        rejoin_timeout: Duration::from_secs(20),
    };
    let mut printer = Printer {
        t0: None,
        rate: args.rate,
        keepalive: args.keepalive,
        peers: BTreeMap::new(),
        new_host: None,
        rejoined: None,
        pending: Vec::new(),
    };
    let mut observe = |note: Note<'_>| printer.note(note);
    // Dropping the run (on Ctrl-C) kills its players.
    let result = tokio::select! {
        result = run_migration(&relay, players, &scenario, &mut observe) => Some(result),
        _ = tokio::signal::ctrl_c() => None,
    };
    printer.flush();
    relay.shutdown().await;
    let Some(result) = result else {
        println!("\ninterrupted: players killed, relay stopped.");
        return Ok(());
    };
    match result {
        Ok(timeline) => {
            if let Some(rejoin) = &timeline.rejoin {
                print_rejoin(&timeline, rejoin);
            }
            println!("\ndone: players closed, relay stopped.");
            Ok(())
        }
        Err(e) => Err(e.context("the demo did not complete")),
    }
}

/// Prints the notes of a run as they come.
struct Printer {
    /// What times are shown relative to: the host's end, then the rejoin's start.
    t0: Option<u64>,
    rate: u32,
    keepalive: Duration,
    /// Peer id of each player process, once known.
    peers: BTreeMap<usize, u16>,
    new_host: Option<u16>,
    /// The process of the old host coming back.
    rejoined: Option<usize>,
    /// Timed lines not printed yet, to print in time order: reports from different processes
    /// arrive slightly out of order.
    pending: Vec<(u64, String)>,
}

/// How long a timed line is held back for an earlier one from another process to overtake it.
const REORDER_US: u64 = 30_000;

impl Printer {
    fn note(&mut self, note: Note<'_>) {
        match note {
            Note::Spawned { who, role, pid } => {
                if role.first().is_some_and(|r| r == "rejoin") {
                    self.rejoined = Some(who);
                }
                let pid = pid.map_or_else(|| "?".into(), |p| p.to_string());
                self.line(
                    None,
                    &format!("process {who} started (pid {pid}): {}", role.join(" ")),
                );
            }
            Note::Report {
                who,
                peer,
                old_host,
                report,
            } => {
                if let Some(p) = peer.or_else(|| report.peer("peer")) {
                    self.peers.insert(who, p);
                }
                if report.event == "host_migrated" && report.bool("you_are_host") == Some(true) {
                    self.new_host = peer;
                }
                // Before the host ends, only the host's view of the joins is worth showing.
                let setup_chatter = self.t0.is_none() && report.event == "event" && !old_host;
                // The payload checks' allocation bookkeeping says nothing the timeline does not.
                if setup_chatter || report.event == "alloc_seen" {
                    return;
                }
                let text = self.describe(report, self.peers.get(&who).copied());
                let who_text = self.who(who, old_host);
                self.line(Some(report.t_us), &format!("{who_text}: {text}"));
            }
            Note::Text { who, peer, line } => {
                self.flush();
                let who_text =
                    peer.map_or_else(|| format!("process {who}"), |p| format!("peer {p}"));
                self.line(None, &format!("{who_text} says: {line}"));
            }
            Note::Playing { code, allocation } => {
                println!(
                    "\nall playing in allocation {allocation} (join code {code}): the host broadcasts \
                     {} ticks/s, each peer sends {} to the host",
                    self.rate, self.rate
                );
            }
            Note::HostEnded { end, t_us } => {
                self.t0 = Some(t_us);
                println!("\n=== ending the host ===");
                match end {
                    HostEnd::Clean => self.line(Some(t_us), "old host told to close (clean exit)"),
                    HostEnd::Crash | HostEnd::Cut => {
                        let how = if end == HostEnd::Crash {
                            "old host killed with SIGKILL (no goodbye)"
                        } else {
                            "old host stopped with SIGSTOP (its network is cut)"
                        };
                        self.line(Some(t_us), how);
                        self.flush();
                        println!(
                            "            (the relay notices when it has heard nothing from it for \
                             its host-loss timeout, at most {})",
                            fmt_duration(self.keepalive)
                        );
                    }
                }
            }
            Note::Migrated(timeline) => {
                self.flush();
                print_summary(timeline, self.rate);
            }
            Note::Rejoining { token, t_us } => {
                self.flush();
                self.t0 = Some(t_us);
                println!("\n=== the old host comes back with its reconnect token ===");
                self.line(
                    Some(t_us),
                    &format!("old host starts again: rejoin {token}"),
                );
            }
        }
    }

    /// How a process is named: by peer id, with its role.
    fn who(&self, who: usize, old_host: bool) -> String {
        let peer = self.peers.get(&who).copied();
        let name = peer.map_or_else(|| format!("process {who}"), |p| format!("peer {p}"));
        if old_host {
            format!("{name} (old host)")
        } else if Some(who) == self.rejoined {
            format!("{name} (old host, back)")
        } else if peer.is_some() && peer == self.new_host {
            format!("{name} (new host)")
        } else {
            name
        }
    }

    /// A report in words; `own` is the reporting player's peer id.
    fn describe(&self, r: &Report, own: Option<u16>) -> String {
        let peer = |key: &str| r.peer(key).map_or_else(|| "?".into(), |p| p.to_string());
        match r.event.as_str() {
            "ready" => format!(
                "in as peer {} of allocation {} (host {}{})",
                peer("peer"),
                r.str("allocation").unwrap_or("?"),
                peer("host"),
                r.str("code")
                    .map_or_else(String::new, |c| format!(", join code {c}")),
            ),
            "snapshot_stored" => format!(
                "migration snapshot of {} bytes stored on the relay",
                r.u64("len").unwrap_or(0)
            ),
            "closing" => "closing its connection".into(),
            "closed" => "closed".into(),
            "host_lost" => format!(
                "host {} lost ({}); peer {} elected{}",
                peer("host"),
                r.str("reason").unwrap_or("?"),
                peer("elected"),
                if r.peer("elected").is_some() && r.peer("elected") == own {
                    " (itself)"
                } else {
                    ""
                },
            ),
            "host_migrated" if r.bool("you_are_host") == Some(true) => {
                let snapshot = match (r.u64("snapshot_len"), r.bool("snapshot_matches")) {
                    (Some(len), Some(true)) => format!("snapshot of {len} bytes received intact"),
                    (Some(len), _) => format!("snapshot of {len} bytes received, CORRUPT"),
                    (None, _) => "no snapshot".into(),
                };
                format!(
                    "NEW HOST, ready in allocation {}: {snapshot}",
                    r.str("allocation").unwrap_or("?")
                )
            }
            "host_migrated" => format!(
                "moved to allocation {}, host now peer {}",
                r.str("allocation").unwrap_or("?"),
                peer("new_host"),
            ),
            "first_from_host" => {
                format!("first datagram from the new host (peer {})", peer("host"))
            }
            "first_from_peer" => format!("first datagram from peer {}", peer("peer")),
            "disconnected" => format!("disconnected ({})", r.str("reason").unwrap_or("?")),
            "event" => r.str("what").unwrap_or("?").to_owned(),
            "peer_joined" | "peer_rejoined" | "peer_left" => {
                let peer = r.fields.get("peer").map_or("?".into(), ToString::to_string);
                let verb = r.event.trim_start_matches("peer_");
                match r.str("reason") {
                    Some(reason) => format!("peer {peer} {verb} ({reason})"),
                    None => format!("peer {peer} {verb}"),
                }
            }
            other => format!("{other} {}", serde_json::Value::Object(r.fields.clone())),
        }
    }

    /// Prints a line, timed from the current reference when there is one; timed lines are held
    /// back briefly so that they come out in time order.
    fn line(&mut self, t_us: Option<u64>, text: &str) {
        match (self.t0, t_us) {
            (Some(t0), Some(t)) => {
                let ms = (t as f64 - t0 as f64) / 1000.0;
                self.pending.push((t, format!("  {ms:+9.1} ms  {text}")));
                let newest = self.pending.iter().map(|(t, _)| *t).max().unwrap_or(t);
                self.print_until(newest.saturating_sub(REORDER_US));
            }
            _ => {
                self.flush();
                println!("  {:>12}  {text}", "");
            }
        }
    }

    /// Prints every held-back line stamped before `until`, in time order.
    fn print_until(&mut self, until: u64) {
        self.pending.sort_by_key(|(t, _)| *t);
        let ready = self.pending.partition_point(|(t, _)| *t < until);
        for (_, line) in self.pending.drain(..ready) {
            println!("{line}");
        }
    }

    /// Prints every held-back line.
    fn flush(&mut self) {
        self.print_until(u64::MAX);
    }
}

/// The migration's key intervals.
fn print_summary(timeline: &Timeline, rate: u32) {
    let f = timeline.figures();
    let show = |v: Option<f64>| v.map_or_else(|| format!("{:>11}", "-"), |v| format!("{v:8.1} ms"));
    println!("\n=== migration complete ===");
    println!(
        "  host end -> loss detected            {}   (reason: {})",
        show(f.end_to_detected),
        timeline.lost_reason.as_deref().unwrap_or("?")
    );
    println!(
        "  detected -> new host ready           {}   (peer {}, snapshot {})",
        show(f.detected_to_new_host),
        timeline
            .new_host
            .map_or_else(|| "?".into(), |p| p.to_string()),
        match (timeline.snapshot_len, timeline.snapshot_matches) {
            (Some(len), Some(true)) => format!("{len} bytes, intact"),
            (Some(len), _) => format!("{len} bytes, NOT intact"),
            (None, _) => "none".into(),
        }
    );
    println!(
        "  detected -> every peer moved         {}",
        show(f.detected_to_all_moved)
    );
    println!(
        "  detected -> all exchanging datagrams {}   (a tick every {:.1} ms at {rate} Hz bounds this)",
        show(f.detected_to_exchanging),
        1000.0 / f64::from(rate.max(1))
    );
    println!(
        "  host end -> all exchanging datagrams {}   (the outage the game sees)",
        show(f.end_to_exchanging)
    );
    if let (Some(moved), Some(ready)) = (timeline.all_moved_us(), timeline.new_host_ready_us) {
        if moved < ready {
            println!(
                "  (the relay moves the peers as soon as the new host's allocation exists, while the \
                 snapshot is still on its way; the new host reports ready once it has read it)"
            );
        }
    }
    let anomalies = timeline.anomalies(timeline.snapshot_len.map_or(0, |l| l as usize));
    if anomalies.is_empty() {
        println!(
            "  every peer kept its peer id; the join code {} still works",
            timeline.code
        );
    } else {
        for a in anomalies {
            println!("  PROBLEM: {a}");
        }
    }
}

/// The old host's return.
fn print_rejoin(timeline: &Timeline, rejoin: &baton_tests::migration_run::RejoinTimeline) {
    let after = |t: Option<u64>| {
        t.map_or_else(
            || "-".into(),
            |t| format!("{:.1} ms", (t as f64 - rejoin.started_us as f64) / 1000.0),
        )
    };
    println!(
        "\nold host back as peer {} (it was peer {}), host is peer {}: in after {}, the new host saw it \
         rejoin after {} and got its first datagram after {} (process start included)",
        rejoin.peer.map_or_else(|| "?".into(), |p| p.to_string()),
        timeline.old_host,
        rejoin.host.map_or_else(|| "?".into(), |p| p.to_string()),
        after(rejoin.ready_us),
        after(rejoin.seen_by_new_host_us),
        after(rejoin.first_datagram_at_new_host_us),
    );
}

/// `2s`, `1.5s`, `500ms`.
fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
