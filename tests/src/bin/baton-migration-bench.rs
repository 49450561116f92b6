//! `baton-migration-bench`: how long a host migration takes, measured (not asserted) over
//! repeated runs with real processes.
//!
//! ```text
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --runs 20
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --runs 20 --mode both
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --mode clean --rate 1000
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --runs 3 --snapshot-bytes 10485760 --json
//! ```
//!
//! Each run starts a host and `--peers` peers as separate OS processes (this executable re-run
//! as players, see `baton_tests::player`) against a relay in this process, lets them play, ends
//! the host (`clean`: it closes its connection; `crash`: SIGKILL; `cut`: SIGSTOP, so the host
//! process still exists but neither sends nor receives anything, as when its network is cut,
//! and is killed once the run is over) and times, from the players' own reports:
//!
//! - host end → detection: the first member hearing `HostLost`. For a crash or a cut this is
//!   the relay's host-loss timeout (`--host-loss-timeout`, 1.5 s by default) after the host's
//!   last datagram, plus up to one of the relay's samples (a sixth of it);
//! - detection → new host ready: the elected member's `HostMigrated`, after it received the
//!   snapshot (so it grows with `--snapshot-bytes`);
//! - detection → all peers moved: every other member's `HostMigrated`;
//! - detection → all exchanging: datagrams have flowed both ways between the new host and
//!   every member (the headline). Each side sends once per tick, so this includes up to one
//!   tick of waiting (16.7 ms at the default 60 Hz); `--rate 1000` shows the migration itself;
//! - host end → all exchanging: the outage a game sees.
//!
//! It prints p50/p90/max/mean per figure (or everything, per run included, with `--json`).
//! Wall-clock figures on a shared machine are noisy: the load average before and after is
//! reported with them.

use std::io::Write;
use std::time::Duration;

use baton_relay::cli::parse_duration;
use baton_tests::migration_run::{
    run_migration, tool_main, Figures, HostEnd, LocalRelay, Note, PlayerSettings, RelaySettings,
    Scenario,
};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use serde_json::json;

/// Command line of the benchmark.
#[derive(Debug, Parser)]
#[command(about = "Measure Baton host migrations with real player processes")]
struct Args {
    /// Migrations per mode.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    runs: u32,
    /// How the host ends.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// Peers joining each host.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    peers: u16,
    /// Datagrams per second each player sends (the game's tick rate).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=2000))]
    rate: u32,
    /// The relay's keepalive timeout (for every member; the relay's default).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    keepalive: Duration,
    /// The relay's host-loss timeout, which bounds crash and cut detection (the relay's
    /// default; capped by the keepalive timeout).
    #[arg(long, default_value = "1500ms", value_parser = parse_duration)]
    host_loss_timeout: Duration,
    /// Size of the migration snapshot each host uploads before it ends, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    snapshot_bytes: usize,
    /// How long everyone plays before the host ends.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    settle: Duration,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// No per-run progress on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Which host endings to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The host closes its connection.
    Clean,
    /// The host process is killed with SIGKILL.
    Crash,
    /// The host's network is cut (its process is stopped with SIGSTOP).
    Cut,
    /// Clean and crash, clean first.
    Both,
    /// Clean, crash and cut, in that order.
    All,
}

fn main() -> anyhow::Result<()> {
    tool_main(|| async {
        let args = Args::parse();
        // Dropping the bench (on Ctrl-C) kills the players of the current run.
        tokio::select! {
            result = bench(&args) => result,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted");
                Ok(())
            }
        }
    })
}

/// p50, p90, max and mean of one figure over the complete runs, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    /// Nearest-rank percentiles; `None` without values.
    fn of(mut values: Vec<f64>) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let rank = |p: f64| values[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(Stats {
            n,
            p50: rank(0.5),
            p90: rank(0.9),
            max: values[n - 1],
            mean: values.iter().sum::<f64>() / n as f64,
        })
    }
}

/// A figure of the table: its name in the JSON, its label in the table, how to read it from a run.
type Figure = (&'static str, &'static str, fn(&Figures) -> Option<f64>);

/// The figures of the table, in order.
const FIGURES: [Figure; 5] = [
    ("end_to_detected", "host end -> detected", |f| {
        f.end_to_detected
    }),
    ("detected_to_new_host", "detected -> new host ready", |f| {
        f.detected_to_new_host
    }),
    (
        "detected_to_all_moved",
        "detected -> all peers moved",
        |f| f.detected_to_all_moved,
    ),
    (
        "detected_to_exchanging",
        "detected -> all exchanging *",
        |f| f.detected_to_exchanging,
    ),
    ("end_to_exchanging", "host end -> all exchanging", |f| {
        f.end_to_exchanging
    }),
];

/// Everything measured for one host ending.
struct ModeResult {
    end: HostEnd,
    figures: Vec<Figures>,
    failures: Vec<String>,
    anomalies: Vec<String>,
    elapsed: Duration,
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let load_before = load_average();
    let relay = LocalRelay::start(RelaySettings {
        keepalive: args.keepalive,
        max_snapshot: args.snapshot_bytes,
        host_loss_timeout: Some(args.host_loss_timeout),
    })
    .await?;
    let players = PlayerSettings {
        rate: args.rate,
        keepalive: (args.keepalive / 4).min(Duration::from_secs(2)),
        max_run: Duration::from_secs(300),
    };
    let ends: &[HostEnd] = match args.mode {
        Mode::Clean => &[HostEnd::Clean],
        Mode::Crash => &[HostEnd::Crash],
        Mode::Cut => &[HostEnd::Cut],
        Mode::Both => &[HostEnd::Clean, HostEnd::Crash],
        Mode::All => &[HostEnd::Clean, HostEnd::Crash, HostEnd::Cut],
    };
    let mut results = Vec::new();
    for &end in ends {
        results.push(measure(args, &relay, players, end).await);
    }
    relay.shutdown().await;
    let load_after = load_average();
    if args.json {
        print_json(args, &results, &load_before, &load_after);
    } else {
        print_table(args, &results, &load_before, &load_after);
    }
    Ok(())
}

/// Runs `--runs` migrations ending the host with `end`.
async fn measure(
    args: &Args,
    relay: &LocalRelay,
    players: PlayerSettings,
    end: HostEnd,
) -> ModeResult {
    let scenario = Scenario {
        peers: usize::from(args.peers),
        end,
        snapshot_bytes: args.snapshot_bytes,
        settle: args.settle,
        rejoin: false,
        setup_timeout: Duration::from_secs(120),
        migration_timeout: match end {
            HostEnd::Clean => Duration::from_secs(20),
            HostEnd::Crash | HostEnd::Cut => args.keepalive + Duration::from_secs(20),
        },
        rejoin_timeout: Duration::from_secs(20),
    };
    let started = std::time::Instant::now();
    let mut result = ModeResult {
        end,
        figures: Vec::new(),
        failures: Vec::new(),
        anomalies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for run in 1..=args.runs {
        let mut observe = |note: Note<'_>| {
            if let Note::Text { who, peer, line } = note {
                eprintln!("  [player {who}, peer {peer:?}] {line}");
            }
        };
        match run_migration(relay, players, &scenario, &mut observe).await {
            Ok(timeline) => {
                let figures = timeline.figures();
                for a in timeline.anomalies(args.snapshot_bytes) {
                    result.anomalies.push(format!("run {run}: {a}"));
                }
                if !args.quiet {
                    eprintln!(
                        "{end} run {run}/{}: detected {} after the end, all exchanging {} later",
                        args.runs,
                        show(figures.end_to_detected),
                        show(figures.detected_to_exchanging),
                    );
                }
                result.figures.push(figures);
            }
            Err(e) => {
                if !args.quiet {
                    eprintln!("{end} run {run}/{}: FAILED: {e:#}", args.runs);
                }
                result.failures.push(format!("run {run}: {e:#}"));
            }
        }
    }
    result.elapsed = started.elapsed();
    result
}

fn show(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

/// `/proc/loadavg`'s three load averages, if readable.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

fn print_table(args: &Args, results: &[ModeResult], before: &str, after: &str) {
    let tick_ms = 1000.0 / f64::from(args.rate);
    println!(
        "baton-migration-bench: 1 host + {} peers per run, {} runs per mode, {} Hz (a tick every \
         {tick_ms:.1} ms), snapshot {} bytes, relay keepalive {} ms, host-loss timeout {} ms, \
         {} build",
        args.peers,
        args.runs,
        args.rate,
        args.snapshot_bytes,
        args.keepalive.as_millis(),
        args.host_loss_timeout.as_millis(),
        profile()
    );
    println!(
        "machine: {} CPUs, load average {before} before, {after} after (figures are wall-clock \
         and noisy on a shared machine)",
        cpus()
    );
    for r in results {
        let title = match r.end {
            HostEnd::Clean => "clean exit (host closes its connection)",
            HostEnd::Crash => "crash (host SIGKILLed; detected by the host-loss timeout)",
            HostEnd::Cut => {
                "network cut (host SIGSTOPped: it neither sends nor receives; detected by the \
                 host-loss timeout)"
            }
        };
        println!(
            "\n{title}: {}/{} runs complete in {:.1} s",
            r.figures.len(),
            args.runs,
            r.elapsed.as_secs_f64()
        );
        println!(
            "  {:<30} {:>9} {:>9} {:>9} {:>9}",
            "ms", "p50", "p90", "max", "mean"
        );
        for (_, label, get) in FIGURES {
            match Stats::of(r.figures.iter().filter_map(get).collect()) {
                Some(s) => println!(
                    "  {label:<30} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    s.p50, s.p90, s.max, s.mean
                ),
                None => println!("  {label:<30} {:>9}", "-"),
            }
        }
        for f in &r.failures {
            println!("  FAILED {f}");
        }
        for a in &r.anomalies {
            println!("  ANOMALY {a}");
        }
    }
    let hint = if args.rate < 1000 {
        "; try --rate 1000 to see the migration itself"
    } else {
        ""
    };
    println!(
        "\n* the headline: datagrams flowing both ways between the new host and every peer. Each \
         side sends once per tick, so it includes up to one tick ({tick_ms:.1} ms) of waiting for \
         the next datagram{hint}. The new host starts hosting once it has the snapshot, so a large \
         snapshot adds its transfer time."
    );
}

fn print_json(args: &Args, results: &[ModeResult], before: &str, after: &str) {
    let modes: Vec<_> = results
        .iter()
        .map(|r| {
            let stats: serde_json::Map<String, serde_json::Value> = FIGURES
                .iter()
                .map(|(name, _, get)| {
                    let stats = Stats::of(r.figures.iter().filter_map(get).collect());
                    ((*name).to_owned(), json!(stats))
                })
                .collect();
            json!({
                "mode": r.end,
                "runs": args.runs,
                "complete": r.figures.len(),
                "elapsed_s": r.elapsed.as_secs_f64(),
                "stats_ms": stats,
                "runs_ms": r.figures,
                "failures": r.failures,
                "anomalies": r.anomalies,
            })
        })
        .collect();
    let doc = json!({
        "config": {
            "peers": args.peers,
            "runs": args.runs,
            "rate_hz": args.rate,
            "tick_ms": 1000.0 / f64::from(args.rate),
            "keepalive_ms": args.keepalive.as_millis(),
            "host_loss_timeout_ms": args.host_loss_timeout.as_millis(),
            "snapshot_bytes": args.snapshot_bytes,
            "settle_ms": args.settle.as_millis(),
            "build": profile(),
        },
        "machine": {
            "cpus": cpus(),
            "load_average_before": before,
            "load_average_after": after,
        },
        "modes": modes,
    });
    // A closed stdout (`| head`) is not worth a panic.
    let _ = writeln!(std::io::stdout().lock(), "{doc:#}");
}
