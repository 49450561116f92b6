//! `baton-bench`: load and latency benchmarks of a real Baton relay over loopback.
//!
//! The relay runs as a child process (`baton-relay` from this workspace's build, next to this
//! executable) with a throw-away data directory, or is named on the command line. The bench
//! measures, each as a subcommand:
//!
//! - `load` (the default): N allocations × M peers exchanging datagrams at a fixed rate per
//!   flow, in one or more patterns and payload sizes: relayed datagrams/s, loss, one-way latency
//!   percentiles, relay CPU per 100,000 datagrams, memory, which side saturated first, and the
//!   same traffic through a plain UDP forwarder (the ceiling) for comparison. `--find-max`
//!   raises the rate until loss appears.
//! - `churn`: allocations created (with one join, then closed) per second.
//! - `join`: join-by-code latency.
//! - `idle`: relay memory per connected idle client, and whether it comes back.
//! - `fleet`: a fleet of relay processes sharing a `redis-server` directory, all started by the
//!   bench: join latency through a redirect against a direct join, the time each allocation
//!   takes to move off a draining node, and the drain time of a node carrying 1,000
//!   allocations (SDK sessions as clients).
//! - `paths`: direct host–peer paths in the NAT lab (network namespaces and NAT routers; needs
//!   root, skips otherwise): time to a direct path, latency direct against relayed, and the
//!   relay traffic a mixed-NAT game saves. Not part of `all`.
//! - `instructions`: user-space instructions per delivered datagram, counted by valgrind's
//!   callgrind on a fixed small workload, for Baton and the plain UDP forwarder, with Baton's
//!   most expensive functions (skips without valgrind). Not part of `all`.
//! - `all`: every one of them, each against a fresh relay (or fleet).
//! - `table`: the README's performance table in Markdown, from `load` (with the forwarder and
//!   coturn, and `--find-max`), `idle`, `churn` and `join` in one run.
//!
//! `--quick` shrinks every size so a run takes seconds (a CI smoke test); `--json` prints the
//! report as JSON. The exit status is 1 when a correctness check failed (a datagram reached the
//! wrong client, arrived twice or carried a wrong source; a set-up failed; relay memory did not
//! come back), 2 when the bench itself could not run.
//!
//! The load generator is built to be cheap: raw quinn connections (no SDK), many per endpoint,
//! a few sender tasks walking a phase-sorted schedule, send buffers shared by many datagrams.
//! Every loop is bounded in count or time, and all traffic stays on 127.0.0.0/8.

mod ceiling;
mod churn;
mod coturn;
mod fleet;
mod idle;
mod instructions;
mod load;
mod paths;
mod probe;
mod quic;
mod relay;
mod report;
mod sockets;
mod table;
mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_tests::procstat;
use clap::{Parser, Subcommand};

use crate::churn::{ChurnArgs, JoinArgs};
use crate::fleet::FleetArgs;
use crate::idle::IdleArgs;
use crate::instructions::InstructionsArgs;
use crate::load::LoadArgs;
use crate::paths::PathsArgs;
use crate::report::{Machine, Report};
use crate::table::TableArgs;

/// Load and latency benchmarks of a Baton relay over loopback.
#[derive(Debug, Parser)]
#[command(
    name = "baton-bench",
    version,
    after_help = "Without a subcommand, runs `load` with its defaults. Examples:\n  \
        baton-bench load --allocations 50 --peers 4 --duration 10s\n  \
        baton-bench load --pattern peer-to-host,host-to-peer,broadcast --payload 100,1100\n  \
        baton-bench load --find-max --step-duration 2s\n  \
        baton-bench idle --idle-clients 10000\n  \
        baton-bench fleet --drain-allocations 1000\n  \
        sudo baton-bench paths --trials 20 --duration 15s\n  \
        baton-bench instructions --datagrams 12000 --rounds 3\n  \
        baton-bench --quick all --json\n  \
        baton-bench table"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Common options")]
pub struct Global {
    /// Print the report as JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Small sizes and short windows: every benchmark in a few seconds (CI smoke run).
    #[arg(long, global = true)]
    pub quick: bool,
    /// Benchmark a relay already running at this loopback address instead of starting one
    /// (needs --cert).
    #[arg(long, global = true, value_name = "ADDR")]
    pub relay: Option<SocketAddr>,
    /// With --relay: its certificate (PEM), trusted by the bench.
    #[arg(long, global = true, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// With --relay: its admin server's base URL (for /metrics), e.g. http://127.0.0.1:7701.
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// With --relay: its process id, to read its CPU and memory from /proc.
    #[arg(long, global = true, value_name = "PID")]
    pub relay_pid: Option<u32>,
    /// With --relay: the TLS server name to ask for.
    #[arg(long, global = true, default_value = "localhost")]
    pub server_name: String,
    /// The relay binary to start [default: baton-relay next to this executable].
    #[arg(long, global = true, value_name = "PATH")]
    pub relay_bin: Option<PathBuf>,
    /// Log level of a started relay (its logs go to a file in its temporary directory).
    #[arg(long, global = true, default_value = "info")]
    pub relay_log_level: String,
    /// Worker threads of the load generator [default: one per CPU].
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// QUIC client endpoints (UDP sockets) the generator spreads its connections over.
    #[arg(long, global = true, default_value_t = 8)]
    pub endpoints: usize,
}

impl Global {
    /// Worker threads of the generator's runtime.
    pub fn generator_threads(&self) -> usize {
        self.threads.unwrap_or_else(procstat::cpus).clamp(1, 256)
    }
}

/// What to measure.
#[derive(Debug, Subcommand)]
enum Command {
    /// Datagram throughput, loss and latency, with the UDP ceiling (the default).
    Load(LoadArgs),
    /// Allocations created, joined once and closed per second.
    Churn(ChurnArgs),
    /// Join-by-code latency.
    Join(JoinArgs),
    /// Relay memory per connected idle client, and whether it returns when they leave.
    Idle(IdleArgs),
    /// A fleet of relay processes and their directory: join through a redirect, relocation
    /// time per allocation, drain time of a loaded node.
    Fleet(FleetArgs),
    /// Direct host–peer paths in the NAT lab (needs root; skips otherwise): time to a direct
    /// path, latency direct against relayed, relay traffic saved in a mixed-NAT game.
    Paths(PathsArgs),
    /// User-space instructions per delivered datagram under valgrind's callgrind, Baton and
    /// the plain UDP forwarder, with Baton's top functions (skips without valgrind).
    Instructions(InstructionsArgs),
    /// Every benchmark in turn, each against a fresh relay.
    All(Box<AllArgs>),
    /// The README's performance table: `load` with the forwarder and coturn in the same run
    /// and `--find-max`, then `idle`, `churn` and `join`, printed as Markdown.
    Table(Box<TableArgs>),
    /// (internal) The plain UDP forwarder of the ceiling run.
    #[command(hide = true)]
    UdpForwarder {
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Exit after this many seconds at the latest.
        #[arg(long, default_value_t = 3600)]
        max_seconds: u64,
    },
}

/// `load` with every option at its default, for a run without a subcommand.
#[derive(Debug, Parser)]
struct DefaultLoad {
    #[command(flatten)]
    load: LoadArgs,
}

/// Options of `all`: those of every benchmark.
#[derive(Debug, Clone, clap::Args)]
struct AllArgs {
    /// Those of the benchmarks `table` runs.
    #[command(flatten)]
    each: TableArgs,
    #[command(flatten)]
    fleet: FleetArgs,
}

/// Parses the command line, runs the forwarder or the benchmarks, and sets the exit status.
fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::UdpForwarder {
        threads,
        max_seconds,
    }) = cli.command
    {
        return match ceiling::run_forwarder(threads, max_seconds) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("udp-forwarder: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let threads = cli.global.generator_threads();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("load generator runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        // On Ctrl-C or SIGTERM the run is dropped, which kills the child relay and forwarder
        // (they are spawned kill-on-drop) and removes their temporary directories.
        tokio::select! {
            result = run(cli) => result,
            signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
        }
    });
    // Leftover tasks (e.g. connection drivers) must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(report) if report.errors.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("baton-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the chosen benchmarks and prints the report.
async fn run(cli: Cli) -> anyhow::Result<Report> {
    let global = cli.global;
    let mut report = Report {
        machine: Machine {
            cpus: procstat::cpus(),
            load_average_at_start: procstat::load_average(),
            generator_threads: global.generator_threads(),
            generator_endpoints: global.endpoints,
        },
        ..Report::default()
    };
    match cli.command {
        None => {
            let defaults = DefaultLoad::parse_from(["load"]).load;
            load::run(&global, &defaults, &mut report).await?
        }
        Some(Command::Load(args)) => load::run(&global, &args, &mut report).await?,
        Some(Command::Churn(args)) => churn::run_churn(&global, &args, &mut report).await?,
        Some(Command::Join(args)) => churn::run_join(&global, &args, &mut report).await?,
        Some(Command::Idle(args)) => idle::run(&global, &args, &mut report).await?,
        Some(Command::Fleet(args)) => fleet::run(&global, &args, &mut report).await?,
        Some(Command::Paths(args)) => {
            // It prints its own figures (the lab's, not a loopback relay's).
            paths::run(&global, &args, &mut report).await?;
            return Ok(report);
        }
        Some(Command::Instructions(args)) => {
            // It prints its own figures (its own section and tables).
            instructions::run(&global, &args, &mut report).await?;
            return Ok(report);
        }
        Some(Command::Table(args)) => {
            table::run(&global, &args, &mut report).await;
            if global.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding the report")?
                );
            } else {
                print!("{}", table::markdown(&report));
            }
            return Ok(report);
        }
        Some(Command::All(args)) => {
            // One benchmark failing to run does not stop the others; it is reported.
            let mut load_args = args.each.load.clone();
            if global.quick {
                // Cheap at these sizes; skipped with a note when turnserver is absent.
                load_args.compare_coturn();
            }
            if let Err(e) = load::run(&global, &load_args, &mut report).await {
                report.errors.push(format!("load did not run: {e:#}"));
            }
            if let Err(e) = churn::run_churn(&global, &args.each.churn, &mut report).await {
                report.errors.push(format!("churn did not run: {e:#}"));
            }
            if let Err(e) = churn::run_join(&global, &args.each.join, &mut report).await {
                report.errors.push(format!("join did not run: {e:#}"));
            }
            if let Err(e) = idle::run(&global, &args.each.idle, &mut report).await {
                report.errors.push(format!("idle did not run: {e:#}"));
            }
            if global.relay.is_some() {
                report.warnings.push(
                    "fleet skipped: it starts its own directory and nodes, and --relay names one relay"
                        .to_owned(),
                );
            } else if let Err(e) = fleet::run(&global, &args.fleet, &mut report).await {
                report.errors.push(format!("fleet did not run: {e:#}"));
            }
        }
        Some(Command::UdpForwarder { .. }) => {
            anyhow::bail!("udp-forwarder runs outside the generator runtime")
        }
    }
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        report::print_human(&report);
    }
    Ok(report)
}

/// Waits for SIGINT or SIGTERM and names it.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            // Without handlers the default action (exit) applies; never resolve.
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Parses a duration: a number with an optional unit (`ms`, `s`, `m`), seconds by default.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 2m)"))?;
    if !(0.0..=86_400.0).contains(&(value * scale)) {
        return Err(format!("{text:?} is out of range (0 to 24 h)"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
