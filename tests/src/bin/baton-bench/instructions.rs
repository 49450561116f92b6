//! `instructions`: user-space instructions per delivered datagram, counted by valgrind's
//! callgrind on a fixed small workload, for Baton and for the plain UDP forwarder.
//!
//! CPU time on a shared machine swings from run to run; an instruction count much less so.
//! Each target (the relay, then the forwarder) runs as a child under `valgrind
//! --tool=callgrind`. The bench
//!
//! 1. takes an **idle baseline**: zeroes the target's counters (`callgrind_control -z`),
//!    waits `--idle` with no client connected, dumps them (`callgrind_control -d`): the
//!    instructions the target spends per second on its own timers;
//! 2. sets up its clients (connections, allocations, joins) and sends a short uncounted
//!    warm-up;
//! 3. runs the **rounds**: zeroes the counters, sends exactly `--datagrams` datagrams (the
//!    load run's traffic, at a modest rate since valgrind runs the target tens of times
//!    slower), lets them drain, and dumps. Every datagram must arrive exactly once: a loss
//!    changes the count, so after one every round runs again at half the rate (twice at most),
//!    or the run fails.
//!
//! A round's figure is its instructions, less the idle rate times its length, divided by the
//! datagrams delivered (a broadcast counts once per receiver). Kernel work (system calls) is
//! not counted: callgrind sees user space only. The count is not a constant of the code alone:
//! it depends on the rate per connection, which decides how many datagrams share a wake-up, a
//! packet or an ACK. Compare figures at the same rate. Baton's most expensive functions, by
//! self and by inclusive cost, come from `callgrind_annotate` on the last round's dump.
//!
//! Without valgrind (or its `callgrind_control` and `callgrind_annotate` scripts) the
//! benchmark is skipped with a message. Not part of `all`: it takes minutes.

mod profile;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::task::JoinSet;

use self::profile::{median, spread_pct, FunctionCost};
use crate::ceiling::{self, Forwarder};
use crate::quic::{self, ControlEvents};
use crate::relay::{Needs, Relay};
use crate::report::{note, Progress, Report};
use crate::traffic::{self, Pattern, RunSpec, Shared, Transport};
use crate::Global;

/// Options of `instructions`.
#[derive(Debug, Clone, clap::Args)]
pub struct InstructionsArgs {
    /// Datagrams sent in each counted round [default: 12000; --quick: 1000].
    #[arg(long)]
    pub datagrams: Option<u64>,
    /// Counted rounds per target; the figure is their median, and their spread is reported
    /// [default: 3; --quick: 2].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Allocations.
    #[arg(long, default_value_t = 2)]
    pub allocations: usize,
    /// Peers per allocation besides the host.
    #[arg(long, default_value_t = 3)]
    pub peers: usize,
    /// Datagrams per second per flow (valgrind runs the target tens of times slower; halved
    /// after a round with loss).
    #[arg(long, default_value_t = 40.0)]
    pub rate: f64,
    /// Payload bytes per datagram.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Traffic pattern (`game`: peers to their host, and the host's broadcast).
    #[arg(long, value_enum, default_value_t = Pattern::Game)]
    pub pattern: Pattern,
    /// Length of the idle baseline [default: 10s; --quick: 2s].
    #[arg(long, value_parser = crate::parse_duration)]
    pub idle: Option<Duration>,
    /// Functions listed in Baton's profile.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Keep the last round's callgrind dump of each target in this directory (for
    /// `callgrind_annotate` or KCachegrind).
    #[arg(long, value_name = "DIR")]
    pub keep_profiles: Option<PathBuf>,
}

/// Uncounted traffic before the idle baseline, so lazily built state exists before counting.
const WARMUP: Duration = Duration::from_secs(2);

/// Rounds retried at half the rate after loss, at most.
const RETRIES: usize = 2;

/// How long one `callgrind_control` command may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a dump file may take to appear complete after `callgrind_control -d` returned.
const DUMP_TIMEOUT: Duration = Duration::from_secs(30);

/// The workload, with defaults applied.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Allocations.
    pub allocations: usize,
    /// Members per allocation, host included.
    pub members: usize,
    /// Who sends to whom.
    pub pattern: Pattern,
    /// Payload bytes per datagram.
    pub payload_bytes: usize,
    /// Flows (senders × destinations) of the pattern.
    pub flows: usize,
    /// Datagrams sent per round (a whole number of periods of every flow).
    pub datagrams_sent: u64,
    /// Datagrams the receivers must get per round (a broadcast counts once per receiver).
    pub datagrams_delivered: u64,
    /// Datagrams per second per flow asked for.
    pub rate_per_flow: f64,
    /// Counted rounds per target.
    pub rounds: usize,
    /// Length of the idle baseline, seconds.
    pub idle_s: f64,
}

/// One counted round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Datagrams per second per flow it ran at.
    pub rate_per_flow: f64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Seconds from zeroing the counters to dumping them.
    pub elapsed_s: f64,
    /// Instructions counted.
    pub ir: u64,
    /// `ir` less the idle rate times `elapsed_s`.
    pub net_ir: f64,
    /// `ir / delivered`.
    pub raw_ir_per_delivered: f64,
    /// `net_ir / delivered`: the figure.
    pub ir_per_delivered: f64,
    /// Socket and polling calls per delivered datagram (`sendmsg`, `recvmmsg`,
    /// `epoll_wait`, …): fewer when datagrams shared a wake-up or a packet.
    pub syscalls_per_delivered: BTreeMap<String, f64>,
}

/// One target's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TargetFigures {
    /// `baton` or `udp-forwarder`.
    pub target: &'static str,
    /// How it ran.
    pub description: String,
    /// Instructions per second with clients connected and no traffic.
    pub idle_ir_per_s: f64,
    /// The counted rounds.
    pub rounds: Vec<Round>,
    /// Median of the rounds' `ir_per_delivered`.
    pub ir_per_delivered: f64,
    /// Median of the rounds' `raw_ir_per_delivered`.
    pub raw_ir_per_delivered: f64,
    /// (largest − smallest) ÷ median of the rounds' `ir_per_delivered`, percent.
    pub spread_pct: f64,
    /// Rounds retried at a lower rate after loss or a late send.
    pub retries: usize,
}

/// The `instructions` section of the report.
#[derive(Debug, Clone, Serialize)]
pub struct InstructionsReport {
    /// `valgrind --version`.
    pub valgrind: String,
    /// What each round sends.
    pub workload: Workload,
    /// Through the relay.
    pub baton: Option<TargetFigures>,
    /// Through the plain UDP forwarder.
    pub forwarder: Option<TargetFigures>,
    /// Baton's instructions per delivered datagram ÷ the forwarder's.
    pub ratio: Option<f64>,
    /// Baton's functions by self cost (their own instructions), last round.
    pub baton_top_self: Vec<FunctionCost>,
    /// Baton's functions by inclusive cost (with their callees), last round; the runtime's
    /// and the standard library's frames, which include everything, left out.
    pub baton_top_inclusive: Vec<FunctionCost>,
}

/// valgrind and its callgrind scripts, found on `PATH`.
struct Tools {
    version: String,
}

impl Tools {
    /// `Err` with the reason the benchmark cannot run here.
    async fn find() -> Result<Tools, String> {
        let version = match tokio::process::Command::new("valgrind")
            .arg("--version")
            .output()
            .await
        {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
            Ok(out) => return Err(format!("`valgrind --version` failed ({})", out.status)),
            Err(e) => return Err(format!("valgrind not found ({e})")),
        };
        for script in ["callgrind_control", "callgrind_annotate"] {
            let found = tokio::process::Command::new(script)
                .arg("-h")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            if found.is_err() {
                return Err(format!("{script} not found (it comes with valgrind)"));
            }
        }
        Ok(Tools { version })
    }
}

/// Runs the benchmark and prints its figures; correctness problems go to `report.errors`.
pub async fn run(
    global: &Global,
    args: &InstructionsArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tools = match Tools::find().await {
        Ok(tools) => tools,
        Err(why) => {
            println!(
                "instructions: skipped: {why}; install valgrind (Debian: apt-get install valgrind)"
            );
            return Ok(());
        }
    };
    let workload = resolve(global, args)?;
    let mut progress = Progress::new();
    let dir = tempfile::Builder::new()
        .prefix("baton-callgrind-")
        .tempdir()
        .context("creating a directory for callgrind's files")?;
    let mut out = InstructionsReport {
        valgrind: tools.version.clone(),
        workload: workload.clone(),
        baton: None,
        forwarder: None,
        ratio: None,
        baton_top_self: Vec::new(),
        baton_top_inclusive: Vec::new(),
    };
    note(
        &mut progress,
        format!(
            "instructions: {} allocations × {} members, {} {} B at {}/s per flow: {} sent, {} delivered per round, {} rounds per target",
            workload.allocations,
            workload.members,
            workload.pattern.name(),
            workload.payload_bytes,
            workload.rate_per_flow,
            workload.datagrams_sent,
            workload.datagrams_delivered,
            workload.rounds
        ),
    );
    match baton(global, &workload, dir.path(), report, &mut progress).await {
        Ok((figures, dump)) => {
            let delivered = figures.rounds.last().map_or(0, |r| r.delivered);
            match profile::top_functions(&dump, args.top, delivered).await {
                Ok((by_self, inclusive)) => {
                    out.baton_top_self = by_self;
                    out.baton_top_inclusive = inclusive;
                }
                Err(e) => report
                    .warnings
                    .push(format!("instructions: Baton's profile: {e:#}")),
            }
            keep(args, &dump, "baton", report);
            out.baton = Some(figures);
        }
        Err(e) => report.errors.push(format!("instructions: Baton: {e:#}")),
    }
    match forwarder(&workload, dir.path(), report, &mut progress).await {
        Ok((figures, dump)) => {
            keep(args, &dump, "udp-forwarder", report);
            out.forwarder = Some(figures);
        }
        Err(e) => report
            .errors
            .push(format!("instructions: UDP forwarder: {e:#}")),
    }
    for t in [&out.baton, &out.forwarder].into_iter().flatten() {
        if t.retries > 0 {
            report.warnings.push(format!(
                "instructions: {} ran at {}/s per flow after loss at higher rates; the count \
                 depends on the rate (how many datagrams share a wake-up, a packet, an ACK), so \
                 compare it only with figures at that rate",
                t.target,
                t.rounds.first().map_or(0.0, |r| r.rate_per_flow)
            ));
        }
    }
    out.ratio = match (&out.baton, &out.forwarder) {
        (Some(b), Some(f)) if f.ir_per_delivered > 0.0 => {
            Some(b.ir_per_delivered / f.ir_per_delivered)
        }
        _ => None,
    };
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "machine": report.machine,
                "instructions": out,
                "errors": report.errors,
                "warnings": report.warnings,
            }))
            .context("encoding the report")?
        );
    } else {
        print_human(&out, report);
    }
    Ok(())
}

/// The workload of `args` (defaults applied), checked.
fn resolve(global: &Global, args: &InstructionsArgs) -> anyhow::Result<Workload> {
    let members = args.peers + 1;
    if args.allocations == 0 || args.allocations > 1000 || args.peers == 0 {
        bail!("need 1 to 1000 allocations with at least one peer each");
    }
    if members > usize::from(baton_protocol::MAX_PEERS_LIMIT) {
        bail!(
            "at most {} members per allocation",
            baton_protocol::MAX_PEERS_LIMIT
        );
    }
    if !(traffic::STAMP_LEN..=baton_protocol::MAX_DATAGRAM_PAYLOAD).contains(&args.payload) {
        bail!(
            "payload {} out of range: {} to {}",
            args.payload,
            traffic::STAMP_LEN,
            baton_protocol::MAX_DATAGRAM_PAYLOAD
        );
    }
    if !(args.rate > 0.0 && args.rate <= 10_000.0) {
        bail!("--rate must be above 0 and at most 10000 per flow");
    }
    let rounds = args.rounds.unwrap_or(if global.quick { 2 } else { 3 });
    if !(1..=20).contains(&rounds) {
        bail!("--rounds must be 1 to 20");
    }
    let datagrams = args
        .datagrams
        .unwrap_or(if global.quick { 1_000 } else { 12_000 });
    if !(1..=10_000_000).contains(&datagrams) {
        bail!("--datagrams must be 1 to 10000000");
    }
    let topo = traffic::Topology {
        allocations: args.allocations,
        members,
        peer_ids: (0..args.allocations * members)
            .map(|g| (g % members) as u16)
            .collect(),
    };
    let flows = traffic::flows(&topo, args.pattern);
    let periods = profile::periods(datagrams, flows.len() as u64);
    let fanout: u64 = flows.iter().map(|f| u64::from(f.fanout)).sum();
    let idle = args
        .idle
        .unwrap_or(Duration::from_secs(if global.quick { 2 } else { 10 }));
    if idle.is_zero() || idle > Duration::from_secs(600) {
        bail!("--idle must be above zero and at most 10 minutes");
    }
    Ok(Workload {
        allocations: args.allocations,
        members,
        pattern: args.pattern,
        payload_bytes: args.payload,
        flows: flows.len(),
        datagrams_sent: periods * flows.len() as u64,
        datagrams_delivered: periods * fanout,
        rate_per_flow: args.rate,
        rounds,
        idle_s: idle.as_secs_f64(),
    })
}

/// The valgrind command line a target runs under: callgrind, its dumps as `<dir>/<name>.<pid>`
/// (`.1`, `.2`, … for each `callgrind_control -d`) and valgrind's messages in a log file.
fn valgrind(dir: &Path, name: &str) -> Vec<OsString> {
    let mut out_file = OsString::from("--callgrind-out-file=");
    out_file.push(dir.join(format!("{name}.%p")));
    let mut log_file = OsString::from("--log-file=");
    log_file.push(dir.join(format!("{name}.%p.valgrind.log")));
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        out_file,
        log_file,
    ]
}

/// A process under callgrind: its counters, zeroed and dumped through `callgrind_control`.
struct Profiler {
    name: &'static str,
    pid: u32,
    /// Its dumps' path without the `.N` suffix.
    dump_base: PathBuf,
    dumps: usize,
}

impl Profiler {
    /// The process `pid`, started with [`valgrind`]`(dir, name)`.
    fn new(name: &'static str, pid: u32, dir: &Path) -> Profiler {
        Profiler {
            name,
            pid,
            dump_base: dir.join(format!("{name}.{pid}")),
            dumps: 0,
        }
    }

    /// Zeroes the target's counters.
    async fn zero(&self) -> anyhow::Result<()> {
        control(self.pid, "-z").await
    }

    /// Dumps the target's counters and returns the dump's path, its total instructions and
    /// its [`profile::SYSCALLS`] counts.
    async fn dump(&mut self) -> anyhow::Result<(PathBuf, u64, BTreeMap<String, u64>)> {
        control(self.pid, "-d").await?;
        self.dumps += 1;
        let mut path = self.dump_base.clone().into_os_string();
        path.push(format!(".{}", self.dumps));
        let path = PathBuf::from(path);
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Some(ir) = profile::total_ir(&text) {
                    let calls = profile::call_counts(&text, &profile::SYSCALLS);
                    return Ok((path, ir, calls));
                }
            }
            if started.elapsed() > DUMP_TIMEOUT {
                bail!("callgrind wrote no complete dump at {}", path.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The idle baseline: instructions per second over `idle` with no client connected (the
    /// process's own timers: the relay's lane probe, 100 a second, and its control plane's).
    /// Measured before any client connects, because their keepalives run only while they send
    /// nothing: subtracting them from a round would take away work the round did not do.
    async fn idle_rate(&mut self, idle: Duration, progress: &mut Progress) -> anyhow::Result<f64> {
        note(
            progress,
            format!(
                "instructions: {}: idle baseline, {:.0} s",
                self.name,
                idle.as_secs_f64()
            ),
        );
        self.zero().await?;
        let started = Instant::now();
        tokio::time::sleep(idle).await;
        let (_, ir, _) = self.dump().await?;
        Ok(ir as f64 / started.elapsed().as_secs_f64())
    }
}

/// A target under callgrind, ready for traffic.
struct Counted<'a> {
    name: &'static str,
    profiler: Profiler,
    idle_ir_per_s: f64,
    shared: Arc<Shared>,
    transport: Arc<Transport>,
    events: Option<&'a ControlEvents>,
    workload: &'a Workload,
}

impl Counted<'_> {
    /// Sends `sent` datagrams at `rate` per flow and waits for them; `Ok(None)` when the
    /// round must be retried (loss, a late or a refused send), with the reason noted.
    async fn traffic(
        &self,
        rate: f64,
        sent: u64,
        progress: &mut Progress,
    ) -> anyhow::Result<Result<(u64, u64), String>> {
        let flows = traffic::flows(&self.shared.topo, self.workload.pattern);
        let periods = sent / flows.len().max(1) as u64;
        let spec = RunSpec {
            pattern: self.workload.pattern,
            payload: self.workload.payload_bytes,
            rate,
            warmup: Duration::ZERO,
            duration: profile::window(periods, rate),
        };
        let running = traffic::start(&self.shared, &self.transport, &flows, &spec, 2);
        let end = running.window_end;
        let label = format!("instructions: {} {rate}/s per flow", self.name);
        // Bounded: ends at the window's end.
        while Instant::now() < end {
            let left = end.saturating_duration_since(Instant::now());
            progress.update(|| {
                format!(
                    "{label}: {:.0} s left, {} received",
                    left.as_secs_f64(),
                    self.shared.received_so_far()
                )
            });
            tokio::time::sleep(left.min(Duration::from_millis(500))).await;
        }
        let (send, recv) = running.finish().await;
        progress.done();
        if let Some(events) = self.events {
            let dropped = events.take_dropped();
            if !dropped.is_empty() {
                return Ok(Err(format!("the relay reported drops {dropped:?}")));
            }
            if events.take_membership() > 0 {
                bail!("clients saw departures or migrations during the run");
            }
        }
        if recv.duplicates + recv.misdelivered + recv.source_mismatch + recv.malformed > 0 {
            bail!(
                "{} misdelivered, {} duplicated, {} with a wrong source, {} malformed datagrams",
                recv.misdelivered,
                recv.duplicates,
                recv.source_mismatch,
                recv.malformed
            );
        }
        // A datagram due at the end of the window but sent just after it is missing from the
        // senders' count and reaches its receivers as "outside the window": it was sent and
        // delivered all the same, so it counts.
        let delivered = recv.received + recv.outside_window;
        let planned = periods * flows.iter().map(|f| u64::from(f.fanout)).sum::<u64>();
        let problem = if send.skipped + send.local_drops > 0 {
            Some(format!(
                "the generator could not send {} datagrams on time ({} skipped, {} refused)",
                send.skipped + send.local_drops,
                send.skipped,
                send.local_drops
            ))
        } else if delivered != planned || recv.stale > 0 {
            Some(format!(
                "{delivered} of {planned} delivered ({} from an earlier round)",
                recv.stale
            ))
        } else {
            None
        };
        Ok(match problem {
            Some(p) => Err(p),
            None => Ok((periods * flows.len() as u64, delivered)),
        })
    }

    /// Warm-up, then the counted rounds (all again at half the rate after loss). Returns the
    /// figures and the last round's dump.
    async fn measure(
        &mut self,
        description: String,
        progress: &mut Progress,
    ) -> anyhow::Result<(TargetFigures, PathBuf)> {
        let w = self.workload;
        let warmup_sent =
            ((w.rate_per_flow * WARMUP.as_secs_f64()).ceil() as u64).max(1) * w.flows as u64;
        // The warm-up's outcome does not matter, only that the paths have run once.
        let _ = self.traffic(w.rate_per_flow, warmup_sent, progress).await?;
        let idle_ir_per_s = self.idle_ir_per_s;

        let mut rate = w.rate_per_flow;
        let mut rounds = Vec::new();
        let mut retries = 0;
        let mut last_dump = None;
        while rounds.len() < w.rounds {
            self.profiler.zero().await?;
            let started = Instant::now();
            let outcome = self.traffic(rate, w.datagrams_sent, progress).await?;
            let (dump, ir, calls) = self.profiler.dump().await?;
            let elapsed_s = started.elapsed().as_secs_f64();
            match outcome {
                Ok((sent, delivered)) => {
                    let net_ir = ir as f64 - idle_ir_per_s * elapsed_s;
                    let round = Round {
                        rate_per_flow: rate,
                        sent,
                        delivered,
                        elapsed_s,
                        ir,
                        net_ir,
                        raw_ir_per_delivered: ir as f64 / delivered.max(1) as f64,
                        ir_per_delivered: net_ir / delivered.max(1) as f64,
                        syscalls_per_delivered: calls
                            .into_iter()
                            .map(|(name, n)| (name, n as f64 / delivered.max(1) as f64))
                            .collect(),
                    };
                    note(
                        progress,
                        format!(
                            "instructions: {} round {}: {} Ir in {:.1} s, {:.0} Ir per delivered datagram ({:.0} before the idle baseline)",
                            self.name,
                            rounds.len() + 1,
                            ir,
                            elapsed_s,
                            round.ir_per_delivered,
                            round.raw_ir_per_delivered
                        ),
                    );
                    rounds.push(round);
                    last_dump = Some(dump);
                }
                Err(problem) if retries < RETRIES => {
                    // The count depends on the rate (how often datagrams share a wake-up or a
                    // packet), so every counted round runs at the same one: start again.
                    retries += 1;
                    rate /= 2.0;
                    rounds.clear();
                    note(
                        progress,
                        format!(
                            "instructions: {}: {problem}; every round again at {rate}/s per flow",
                            self.name
                        ),
                    );
                }
                Err(problem) => bail!(
                    "{problem} at {rate}/s per flow, after {RETRIES} retries at lower rates: the count would include work for datagrams not delivered"
                ),
            }
        }
        let per: Vec<f64> = rounds.iter().map(|r| r.ir_per_delivered).collect();
        let raw: Vec<f64> = rounds.iter().map(|r| r.raw_ir_per_delivered).collect();
        let figures = TargetFigures {
            target: self.name,
            description,
            idle_ir_per_s,
            ir_per_delivered: median(&per),
            raw_ir_per_delivered: median(&raw),
            spread_pct: spread_pct(&per),
            rounds,
            retries,
        };
        let dump = last_dump.context("no round was counted")?;
        Ok((figures, dump))
    }
}

/// The workload's idle baseline length.
fn idle(w: &Workload) -> Duration {
    Duration::from_secs_f64(w.idle_s)
}

/// Runs `callgrind_control <flag> <pid>`.
async fn control(pid: u32, flag: &str) -> anyhow::Result<()> {
    let out = tokio::time::timeout(
        CONTROL_TIMEOUT,
        tokio::process::Command::new("callgrind_control")
            .arg(flag)
            .arg(pid.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "`callgrind_control {flag} {pid}` did not answer within {CONTROL_TIMEOUT:?} \
             (its vgdb needs ptrace to reach a process blocked in a system call: run as root \
             or with kernel.yama.ptrace_scope = 0)"
        )
    })?
    .with_context(|| format!("running callgrind_control {flag} {pid}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("OK") {
        bail!(
            "`callgrind_control {flag} {pid}` failed: {} {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The relay under callgrind: its clients, the measurement, then teardown.
async fn baton(
    global: &Global,
    w: &Workload,
    dir: &Path,
    report: &mut Report,
    progress: &mut Progress,
) -> anyhow::Result<(TargetFigures, PathBuf)> {
    let clients_total = w.allocations * w.members;
    let needs = Needs {
        connections: clients_total + 10,
        allocations: w.allocations + 2,
        members: w.members,
    };
    note(progress, "instructions: starting the relay under callgrind");
    let relay = Relay::start_under(global, needs, &valgrind(dir, "baton")).await?;
    let result = async {
        let pid = relay.pid.context("the relay's process id is unknown")?;
        let mut profiler = Profiler::new("baton", pid, dir);
        let idle_ir_per_s = profiler.idle_rate(idle(w), progress).await?;
        let pool = Arc::new(quic::Clients::new(
            &relay,
            global.endpoints.min(clients_total),
        )?);
        let (mut clients, topo) = crate::load::setup(
            &pool,
            w.allocations,
            w.members,
            w.allocations,
            "instructions",
            progress,
        )
        .await?;
        let shared = Shared::new(topo, 4);
        let events = Arc::new(ControlEvents::default());
        let mut tasks = JoinSet::new();
        let lost = quic::spawn_receivers(&mut tasks, &mut clients, &shared, &events);
        let mut counted = Counted {
            name: "baton",
            profiler,
            idle_ir_per_s,
            shared,
            transport: Arc::new(Transport::Quic(
                clients.iter().map(|c| c.conn.clone()).collect(),
            )),
            events: Some(&events),
            workload: w,
        };
        let result = counted
            .measure(format!("{} under callgrind", relay.description), progress)
            .await;
        crate::load::close_all(&clients, w.members);
        pool.wait_idle().await;
        tasks.abort_all();
        let lost = lost.load(std::sync::atomic::Ordering::Relaxed);
        if lost > 0 {
            report.errors.push(format!(
                "instructions: {lost} client connections to the relay were lost while counting"
            ));
        }
        if let Err(e) = relay.check_alive() {
            report.errors.push(format!("instructions: {e:#}"));
        }
        result
    }
    .await;
    relay.stop().await;
    result
}

/// The UDP forwarder under callgrind: its clients, the measurement, then teardown.
async fn forwarder(
    w: &Workload,
    dir: &Path,
    _report: &mut Report,
    progress: &mut Progress,
) -> anyhow::Result<(TargetFigures, PathBuf)> {
    // One worker, one receive loop: the relay's data plane at its default (`--endpoints 1`)
    // is one thread too. With two loops on the one socket both wake for each datagram and
    // one finds nothing, in an order that varies from run to run, and so did the count (by
    // 8 % between two rounds).
    let threads = 1;
    note(
        progress,
        "instructions: starting the UDP forwarder under callgrind",
    );
    let forwarder = Forwarder::start_under(threads, 3600, &valgrind(dir, "udp-forwarder")).await?;
    let result = async {
        let pid = forwarder
            .pid
            .context("the forwarder's process id is unknown")?;
        let mut profiler = Profiler::new("udp-forwarder", pid, dir);
        let idle_ir_per_s = profiler.idle_rate(idle(w), progress).await?;
        let (sockets, topo) = ceiling::clients(forwarder.addr, w.allocations, w.members).await?;
        let shared = Shared::new(topo, 4);
        let mut tasks = ceiling::spawn_receivers(&sockets, &shared);
        let mut counted = Counted {
            name: "udp-forwarder",
            profiler,
            idle_ir_per_s,
            shared,
            transport: Arc::new(Transport::Udp(sockets)),
            events: None,
            workload: w,
        };
        let result = counted
            .measure(
                format!(
                    "baton-bench udp-forwarder --threads {threads} under callgrind (pid {pid})"
                ),
                progress,
            )
            .await;
        tasks.abort_all();
        result
    }
    .await;
    forwarder.stop().await;
    result
}

/// Copies `dump` into `--keep-profiles` as `<name>.callgrind.out`.
fn keep(args: &InstructionsArgs, dump: &Path, name: &str, report: &mut Report) {
    let Some(dir) = &args.keep_profiles else {
        return;
    };
    let to = dir.join(format!("{name}.callgrind.out"));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::copy(dump, &to)) {
        report
            .warnings
            .push(format!("instructions: keeping {}: {e}", to.display()));
    }
}

/// The tables printed without `--json`.
fn print_human(out: &InstructionsReport, report: &Report) {
    let w = &out.workload;
    println!(
        "\nUser-space instructions per delivered datagram (callgrind; {})",
        out.valgrind
    );
    println!(
        "workload per round: {} allocations × {} members, {} pattern, {} B payload, {}/s per flow: \
         {} datagrams sent, {} delivered; idle baseline {:.0} s",
        w.allocations,
        w.members,
        w.pattern.name(),
        w.payload_bytes,
        w.rate_per_flow,
        w.datagrams_sent,
        w.datagrams_delivered,
        w.idle_s
    );
    println!(
        "{:<15} {:>14} {:>14} {:>12} {:>8} {:>7}",
        "target", "Ir/delivered", "raw Ir/deliv.", "idle Ir/s", "spread", "rounds"
    );
    for t in [&out.baton, &out.forwarder].into_iter().flatten() {
        println!(
            "{:<15} {:>14.0} {:>14.0} {:>12.0} {:>7.2}% {:>7}",
            t.target,
            t.ir_per_delivered,
            t.raw_ir_per_delivered,
            t.idle_ir_per_s,
            t.spread_pct,
            t.rounds.len()
        );
    }
    if let Some(ratio) = out.ratio {
        println!("Baton ÷ forwarder: {ratio:.2}×");
    }
    for t in [&out.baton, &out.forwarder].into_iter().flatten() {
        let Some(last) = t.rounds.last() else {
            continue;
        };
        let calls: Vec<String> = last
            .syscalls_per_delivered
            .iter()
            .map(|(name, n)| format!("{name} {n:.2}"))
            .collect();
        println!(
            "{} calls per delivered datagram (last round): {}",
            t.target,
            calls.join(", ")
        );
    }
    for (title, list) in [
        ("self", &out.baton_top_self),
        ("inclusive", &out.baton_top_inclusive),
    ] {
        if list.is_empty() {
            continue;
        }
        println!("\nBaton's top functions by {title} cost (last round):");
        println!("{:>7} {:>12}  function", "share", "Ir/deliv.");
        for f in list {
            println!(
                "{:>6.2}% {:>12.0}  {}",
                f.pct, f.ir_per_delivered, f.function
            );
        }
    }
    for warning in &report.warnings {
        println!("warning: {warning}");
    }
    for error in &report.errors {
        println!("error: {error}");
    }
}
