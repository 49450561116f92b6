//! `baton-migration-bench`: how long a host migration takes, measured (not asserted) over
//! repeated runs with real processes.
//!
//! ```text
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --runs 20
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --runs 20 --mode both
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --mode clean --rate 1000
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --runs 3 --snapshot-bytes 10485760 --json
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --false-migrations --hosts 20 --hold 60s
//! cargo run --release -p baton-tests --bin baton-migration-bench -- --false-migrations --quick
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
//!
//! `--false-migrations` measures the other side of the host-loss timeout: how often a host
//! that is alive all along is migrated away from because its link lost too much. For each
//! network condition (`--netsim`, repeatable; by default 5, 10, 20 and 30 % loss with 50 ms of
//! delay and 10 ms of jitter, both ways) it holds `--hosts` allocations for `--hold`, all
//! conditions at once: each an SDK host in this process whose socket runs a
//! [`NetworkSimulator`] of its own (seeded: `--seed` plus its index) and one SDK peer on a
//! clean link, with no game traffic (the worst case: only the heartbeats prove the host alive)
//! or `--traffic` datagrams a second from the peer. Every `HostLost` the peer hears is a false
//! migration (the host never stopped); the pair is then replaced by a fresh one for the rest of
//! the hold. It prints false migrations per host-hour beside the expectation of a model where
//! only heartbeats count: the relay hears nothing for the timeout when the six heartbeats
//! sent in it are all lost, `(1 - p) * p^6` per heartbeat. `--quick` is a smoke run of a few
//! seconds.

use std::io::Write;
use std::time::Duration;

use baton_client::{
    AllocationOptions, ClientConfig, DisconnectReason, Event, Host, NetworkSimulator,
    NetworkSimulatorStats, Peer,
};
use baton_relay::cli::parse_duration;
use baton_tests::migration_run::{
    run_migration, tool_main, Figures, HostEnd, LocalRelay, Note, PlayerSettings, RelaySettings,
    Scenario,
};
use baton_tests::TestRelay;
use clap::{Parser, ValueEnum};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

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
    /// Measure false migrations instead: live hosts on lossy links (`--netsim`), held for
    /// `--hold`; every `HostLost` their peer hears is one.
    #[arg(long)]
    false_migrations: bool,
    /// False migrations: allocations held per network condition.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    hosts: u32,
    /// False migrations: how long each allocation is held.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    hold: Duration,
    /// False migrations: the hosts' network conditions, in `NetworkSimulator`'s text form
    /// (`loss=5%,delay=50ms,jitter=10ms`; a seed in it is ignored, see `--seed`). Repeat for
    /// several; all are measured at once. Default: 5, 10, 20 and 30 % loss with 50 ms of delay
    /// and 10 ms of jitter, both ways.
    #[arg(long = "netsim")]
    netsim: Vec<NetworkSimulator>,
    /// False migrations: datagrams per second the peer sends its host (0: an idle game, where
    /// only the host's heartbeats prove it alive).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=2000))]
    traffic: u32,
    /// False migrations: the first seed of the hosts' simulators (each host, and each pair
    /// that replaces one, gets its own).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// False migrations: a smoke run of a few seconds (4 hosts per condition held 5 s).
    #[arg(long)]
    quick: bool,
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
            result = async {
                if args.false_migrations {
                    false_migrations(&args).await
                } else {
                    bench(&args).await
                }
            } => result,
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

// ---------------------------------------------------------------------------------------------
// --false-migrations: live hosts on lossy links, migrated away from or not
// ---------------------------------------------------------------------------------------------

/// The default network conditions of `--false-migrations`: loss in percent, with 50 ms of delay
/// and 10 ms of jitter both ways.
const DEFAULT_LOSSES: [u32; 4] = [5, 10, 20, 30];

/// Longest wait for a host to create its allocation and its peer to join, on a lossy link.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the peer may take to hear `HostLost` after the host heard it was closed as
/// unresponsive.
const HOST_LOST_GRACE: Duration = Duration::from_secs(5);

/// Most pairs one slot starts over its hold (each false migration or failure starts another).
const MAX_PAIRS_PER_SLOT: u64 = 10_000;

/// What one network condition's hosts went through.
#[derive(Debug, Default)]
struct Tally {
    /// Time hosts spent hosting (from their peer's join to the end of the hold or a false
    /// migration).
    host_time: Duration,
    /// `HostLost` heard by a peer whose host was alive all along.
    false_migrations: u32,
    /// Hosts that heard they were closed as unresponsive (close code 9) before their peer
    /// heard `HostLost` (a pair is left once its peer heard it).
    host_unresponsive: u32,
    /// Pairs started (the first of each slot included).
    pairs: u64,
    /// Pairs that could not be set up, and why.
    setup_failures: Vec<String>,
    /// Pairs that ended otherwise (neither held nor falsely migrated), and why.
    other_ends: Vec<String>,
    /// What the hosts' simulators did.
    link: NetworkSimulatorStats,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.host_time += other.host_time;
        self.false_migrations += other.false_migrations;
        self.host_unresponsive += other.host_unresponsive;
        self.pairs += other.pairs;
        self.setup_failures.extend(other.setup_failures);
        self.other_ends.extend(other.other_ends);
        add_link(&mut self.link, &other.link);
    }

    fn host_hours(&self) -> f64 {
        self.host_time.as_secs_f64() / 3600.0
    }

    /// False migrations per host-hour.
    fn rate(&self) -> Option<f64> {
        let hours = self.host_hours();
        (hours > 0.0).then(|| f64::from(self.false_migrations) / hours)
    }

    /// The one-sided 95 % upper bound of the rate when none was seen (Poisson: 3 / host-hours).
    fn upper_bound(&self) -> Option<f64> {
        let hours = self.host_hours();
        (self.false_migrations == 0 && hours > 0.0).then(|| 3.0 / hours)
    }

    /// The share of what the hosts sent that their simulators dropped as loss.
    fn sent_loss(&self) -> Option<f64> {
        let total = self.link.sent.passed + self.link.sent.lost;
        (total > 0).then(|| self.link.sent.lost as f64 / total as f64)
    }
}

fn add_link(sum: &mut NetworkSimulatorStats, more: &NetworkSimulatorStats) {
    sum.sent.passed += more.sent.passed;
    sum.sent.lost += more.sent.lost;
    sum.sent.overflowed += more.sent.overflowed;
    sum.received.passed += more.received.passed;
    sum.received.lost += more.received.lost;
    sum.received.overflowed += more.received.overflowed;
}

/// False migrations per host-hour a model of heartbeats alone expects: with `timeout`'s six
/// heartbeats sent, `1 / 6` of it apart, each lost with probability `loss` on its own, the
/// relay hears nothing for the timeout when six in a row are lost. A run of six or more starts
/// at a given heartbeat with probability `(1 - loss) * loss^6`. Other packets (QUIC's
/// acknowledgements and loss probes, game traffic) only make it rarer; a run of five lost,
/// whose gap is the timeout itself, trips the relay only when its samples fall just so.
fn expected_rate(loss: f64, timeout: Duration) -> f64 {
    let interval = (timeout / 6).as_secs_f64();
    if interval <= 0.0 {
        return f64::INFINITY;
    }
    3600.0 / interval * (1.0 - loss) * loss.powi(6)
}

/// How one pair (a host and its peer) ended.
enum PairEnd {
    /// Held until the end of the hold; closed once the relay's count is read (a close lost on
    /// a lossy link would have the relay count the host as unresponsive).
    Held(Box<(Host, Peer)>),
    /// The peer heard `HostLost`: a false migration.
    FalseMigration,
    /// Could not be set up.
    SetupFailed(String),
    /// Ended another way.
    Other(String),
}

/// `--false-migrations`: holds `--hosts` allocations per network condition for `--hold`, all
/// at once, and reports how often a live host was migrated away from.
async fn false_migrations(args: &Args) -> anyhow::Result<()> {
    let (hosts, hold) = if args.quick {
        (4, Duration::from_secs(5))
    } else {
        (args.hosts, args.hold)
    };
    let conditions: Vec<NetworkSimulator> = if args.netsim.is_empty() {
        DEFAULT_LOSSES
            .iter()
            .map(|loss| format!("loss={loss}%,delay=50ms,jitter=10ms").parse())
            .collect::<Result<_, _>>()?
    } else {
        args.netsim.clone()
    };
    let load_before = load_average();
    let mut settings = None;
    // Every host and peer connects from 127.0.0.1: lift the per-address connection limits.
    let connections = 2 * conditions.len() * usize::try_from(hosts)? + 16;
    let relay = TestRelay::start_with(|c| {
        let mut apply = || {
            c.set_keepalive_timeout(args.keepalive)?;
            c.set_host_loss_timeout(args.host_loss_timeout)?;
            c.set_max_connections_per_ipv4_address(connections)?;
            let per_24 = c.max_connections_per_ipv4_24().max(connections);
            c.set_max_connections_per_ipv4_24(per_24)?;
            Ok::<_, baton_relay::ConfigError>(())
        };
        let applied = apply();
        settings = Some(applied);
    })
    .await;
    if let Some(Err(e)) = settings {
        anyhow::bail!("relay settings: {e}");
    }
    let client = relay.client();
    if !args.quiet {
        eprintln!(
            "holding {hosts} allocations for each of {} network conditions for {} s...",
            conditions.len(),
            hold.as_secs_f64()
        );
    }
    let started = Instant::now();
    let deadline = started + hold;
    let client = &client;
    let runs = conditions.iter().enumerate().map(|(c, conditions)| {
        let slots = (0..hosts).map(move |h| {
            // Seeds far apart: a slot's replacement pairs take the next ones.
            let seed = args
                .seed
                .wrapping_add((c as u64) << 40)
                .wrapping_add(u64::from(h) << 20);
            hold_slot(client, conditions, seed, args.traffic, deadline)
        });
        async move {
            let mut tally = Tally::default();
            let mut held = Vec::new();
            for (slot, pair) in futures_util::future::join_all(slots).await {
                tally.add(slot);
                held.extend(pair);
            }
            (tally, held)
        }
    });
    let (tallies, held): (Vec<Tally>, Vec<Vec<(Host, Peer)>>) =
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .unzip();
    let elapsed = started.elapsed();
    let unresponsive = relay.relay().handle().metrics().host_unresponsive.get();
    futures_util::future::join_all(held.iter().flatten().map(|(host, peer)| async move {
        peer.close().await;
        host.close().await;
    }))
    .await;
    let load_after = load_average();
    let report = FalseReport {
        hosts,
        hold,
        traffic: args.traffic,
        timeout: args.host_loss_timeout,
        conditions: &conditions,
        tallies: &tallies,
        relay_unresponsive: unresponsive,
        elapsed,
        load_before: &load_before,
        load_after: &load_after,
    };
    if args.json {
        report.print_json();
    } else {
        report.print_table();
    }
    Ok(())
}

/// One slot: a host on `conditions` and a clean peer, replaced after each false migration or
/// failure, until `deadline`. Returns the pair that held to the end, still open.
async fn hold_slot(
    client: &ClientConfig,
    conditions: &NetworkSimulator,
    seed: u64,
    traffic: u32,
    deadline: Instant,
) -> (Tally, Option<(Host, Peer)>) {
    let mut tally = Tally::default();
    for pair in 0..MAX_PAIRS_PER_SLOT {
        if Instant::now() >= deadline {
            break;
        }
        let simulator = NetworkSimulator::new()
            .send(conditions.send_conditions())
            .receive(conditions.receive_conditions())
            .seed(seed.wrapping_add(pair));
        tally.pairs += 1;
        let end = hold_pair(client, simulator.clone(), traffic, deadline, &mut tally).await;
        add_link(&mut tally.link, &simulator.stats());
        match end {
            PairEnd::Held(pair) => return (tally, Some(*pair)),
            PairEnd::FalseMigration => tally.false_migrations += 1,
            PairEnd::SetupFailed(why) => {
                tally.setup_failures.push(why);
                // Not straight back at it.
                tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_secs(1)))
                    .await;
            }
            PairEnd::Other(why) => tally.other_ends.push(why),
        }
    }
    (tally, None)
}

/// What watching a pair saw.
enum Watched {
    /// Nothing until the end of the hold.
    Held,
    /// The peer heard `HostLost`.
    FalseMigration,
    /// Something else ended it.
    Other(String),
}

/// One pair: sets it up, then watches until `deadline` or a false migration, the peer sending
/// `traffic` datagrams a second to the host. Adds the time hosted to `tally`.
async fn hold_pair(
    client: &ClientConfig,
    simulator: NetworkSimulator,
    traffic: u32,
    deadline: Instant,
    tally: &mut Tally,
) -> PairEnd {
    let lossy = client.clone().network_simulator(simulator);
    let setup = tokio::time::timeout(SETUP_TIMEOUT, async {
        let host = Host::create(&lossy, AllocationOptions::default()).await?;
        let peer = Peer::join(client, host.join_code()).await?;
        Ok::<_, baton_client::Error>((host, peer))
    })
    .await;
    let (host, peer) = match setup {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return PairEnd::SetupFailed(e.to_string()),
        Err(_) => return PairEnd::SetupFailed("setup timed out".into()),
    };
    let joined = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / traffic.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut until = deadline;
    let (mut host_open, mut host_events, mut peer_events) = (true, true, true);
    let mut closed_as_unresponsive = false;
    let watched = loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => {
                break if closed_as_unresponsive {
                    Watched::Other("host closed as unresponsive, its peer heard no HostLost".into())
                } else {
                    Watched::Held
                };
            }
            event = peer.next_event(), if peer_events => match event {
                Some(Event::HostLost { .. }) => break Watched::FalseMigration,
                Some(Event::Disconnected { reason }) => {
                    break Watched::Other(format!("peer disconnected: {reason}"))
                }
                Some(_) => {}
                None => peer_events = false,
            },
            event = host.next_event(), if host_events => match event {
                Some(Event::Disconnected { reason: DisconnectReason::HostUnresponsive }) => {
                    tally.host_unresponsive += 1;
                    closed_as_unresponsive = true;
                    // The relay migrated: wait for the peer to hear it, even past the hold.
                    until = Instant::now() + HOST_LOST_GRACE;
                }
                Some(Event::Disconnected { reason }) => {
                    break Watched::Other(format!("host disconnected: {reason}"))
                }
                Some(_) => {}
                None => host_events = false,
            },
            received = host.recv(), if host_open => {
                if received.is_err() {
                    host_open = false;
                }
            }
            _ = tick.tick(), if traffic > 0 => {
                // Refused while the host migrates; the events tell.
                let _ = peer.send_to_host(b"tick");
            }
        }
    };
    tally.host_time += Instant::now()
        .min(deadline)
        .saturating_duration_since(joined);
    let end = match watched {
        Watched::Held => return PairEnd::Held(Box::new((host, peer))),
        Watched::FalseMigration => PairEnd::FalseMigration,
        Watched::Other(why) => PairEnd::Other(why),
    };
    peer.close().await;
    host.close().await;
    end
}

/// Everything `--false-migrations` prints.
struct FalseReport<'a> {
    hosts: u32,
    hold: Duration,
    traffic: u32,
    timeout: Duration,
    conditions: &'a [NetworkSimulator],
    tallies: &'a [Tally],
    relay_unresponsive: u64,
    elapsed: Duration,
    load_before: &'a str,
    load_after: &'a str,
}

impl FalseReport<'_> {
    fn traffic_text(&self) -> String {
        if self.traffic == 0 {
            "no game traffic (only heartbeats prove a host alive)".into()
        } else {
            format!("the peer sends {} datagrams/s to its host", self.traffic)
        }
    }

    fn print_table(&self) {
        println!(
            "baton-migration-bench --false-migrations: {} live hosts per condition, each with one \
             peer on a clean link, held {} s, all conditions at once, {}; host-loss timeout {} ms \
             (a heartbeat every {} ms), {} build",
            self.hosts,
            self.hold.as_secs_f64(),
            self.traffic_text(),
            self.timeout.as_millis(),
            (self.timeout / 6).as_millis(),
            profile()
        );
        println!(
            "machine: {} CPUs, load average {} before, {} after; took {:.1} s",
            cpus(),
            self.load_before,
            self.load_after,
            self.elapsed.as_secs_f64()
        );
        println!(
            "\n  {:<36} {:>10} {:>6} {:>12} {:>16} {:>16}",
            "host link (both ways)",
            "host-hours",
            "false",
            "per host-h",
            "expected/host-h",
            "host sent lost"
        );
        for (conditions, tally) in self.conditions.iter().zip(self.tallies) {
            let measured = match (tally.rate(), tally.upper_bound()) {
                (_, Some(bound)) => format!("< {bound:.2}"),
                (Some(rate), None) => format!("{rate:.2}"),
                (None, None) => "-".into(),
            };
            let loss = conditions.send_conditions().loss;
            println!(
                "  {:<36} {:>10.3} {:>6} {:>12} {:>16} {:>15.1}%",
                conditions.to_string(),
                tally.host_hours(),
                tally.false_migrations,
                measured,
                format!("{:.3e}", expected_rate(loss, self.timeout)),
                tally.sent_loss().unwrap_or(0.0) * 100.0,
            );
        }
        let heard: u32 = self.tallies.iter().map(|t| t.false_migrations).sum();
        let failed: usize = self.tallies.iter().map(|t| t.setup_failures.len()).sum();
        println!(
            "\n  false = HostLost heard by a peer whose host was alive all along; per host-h with \
             none seen is the 95 % upper bound (3 / host-hours); expected = (1 - p) * p^6 per \
             heartbeat (six in a row lost), p the send loss"
        );
        println!(
            "  cross-check: the relay's baton_host_unresponsive_total is {}, the peers heard \
             HostLost {heard} times (the relay also counts a host created in one of the {failed} \
             failed setups whose close, on its lossy link, was lost)",
            self.relay_unresponsive
        );
        for (conditions, tally) in self.conditions.iter().zip(self.tallies) {
            for why in tally.setup_failures.iter().take(5) {
                println!("  SETUP FAILED ({conditions}): {why}");
            }
            for why in tally.other_ends.iter().take(5) {
                println!("  ENDED ({conditions}): {why}");
            }
        }
    }

    fn print_json(&self) {
        let conditions: Vec<_> = self
            .conditions
            .iter()
            .zip(self.tallies)
            .map(|(conditions, tally)| {
                json!({
                    "netsim": conditions.to_string(),
                    "host_hours": tally.host_hours(),
                    "pairs": tally.pairs,
                    "false_migrations": tally.false_migrations,
                    "hosts_told_unresponsive_first": tally.host_unresponsive,
                    "per_host_hour": tally.rate(),
                    "upper_bound_95_per_host_hour": tally.upper_bound(),
                    "expected_per_host_hour": expected_rate(conditions.send_conditions().loss, self.timeout),
                    "host_sent": { "passed": tally.link.sent.passed, "lost": tally.link.sent.lost, "overflowed": tally.link.sent.overflowed },
                    "host_received": { "passed": tally.link.received.passed, "lost": tally.link.received.lost, "overflowed": tally.link.received.overflowed },
                    "setup_failures": tally.setup_failures,
                    "other_ends": tally.other_ends,
                })
            })
            .collect();
        let doc = json!({
            "config": {
                "hosts_per_condition": self.hosts,
                "hold_s": self.hold.as_secs_f64(),
                "traffic_hz": self.traffic,
                "host_loss_timeout_ms": self.timeout.as_millis(),
                "build": profile(),
            },
            "machine": {
                "cpus": cpus(),
                "load_average_before": self.load_before,
                "load_average_after": self.load_after,
            },
            "elapsed_s": self.elapsed.as_secs_f64(),
            "relay_host_unresponsive_total": self.relay_unresponsive,
            "conditions": conditions,
        });
        // A closed stdout (`| head`) is not worth a panic.
        let _ = writeln!(std::io::stdout().lock(), "{doc:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_expects_six_in_a_row() {
        let timeout = Duration::from_millis(1500);
        // 14,400 heartbeats an hour.
        let at = |p: f64| expected_rate(p, timeout);
        assert!((at(0.5) - 14_400.0 * 0.5 * 0.5f64.powi(6)).abs() < 1e-9);
        assert!((at(0.3) - 7.348).abs() < 0.01, "{}", at(0.3));
        assert!(at(0.05) < 1e-3);
        assert_eq!(at(0.0), 0.0);
        assert_eq!(at(1.0), 0.0);
    }

    #[test]
    fn rates_and_bounds() {
        let mut tally = Tally {
            host_time: Duration::from_secs(1800),
            ..Tally::default()
        };
        assert_eq!(tally.rate(), Some(0.0));
        assert_eq!(tally.upper_bound(), Some(6.0));
        tally.false_migrations = 3;
        assert_eq!(tally.rate(), Some(6.0));
        assert_eq!(tally.upper_bound(), None);
        assert_eq!(Tally::default().rate(), None);
    }
}
