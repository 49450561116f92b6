//! The load run: N allocations × M peers over loopback, each pattern × payload measured through
//! the relay, then through the plain UDP forwarder (the ceiling) and, with `--compare coturn`,
//! through coturn (`crate::coturn`), and optionally the highest rate each carries with loss
//! under 0.1 % (`--find-max`).
//!
//! Clients are set up once per target and reused by every run; each run has its own id, so
//! stragglers of one never count in the next. No two targets run at the same time.
//!
//! Everything runs on the generator runtime, driven from the task that called [`run`]:
//!
//! - this module: the options ([`LoadArgs`]), the run as a whole, and its correctness checks;
//! - `sides`: the relay, ceiling and coturn sides (clients, receiving tasks, every run);
//! - `target`: one run against one target, with its readings and progress line, and
//!   `--find-max`;
//! - `setup`: connecting and binding the clients of N allocations, and closing them
//!   ([`setup`], [`close_all`], also used by `idle`).

mod setup;
mod sides;
mod target;

use std::time::Duration;

use anyhow::bail;

use self::sides::{baton_side, ceiling_side, coturn_side};
use crate::relay::{Needs, Relay};
use crate::report::{
    note, CaseReport, FindMaxReport, MaxSearch, Progress, Ratio, Report, TrafficReport,
};
use crate::traffic::{Pattern, RunSpec, STAMP_LEN};
use crate::Global;

pub use self::setup::{close_all, setup, setup_with};

/// Options of the load run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Allocations [default: 50; --quick: 4].
    #[arg(long)]
    pub allocations: Option<usize>,
    /// Peers per allocation besides the host [default: 4; --quick: 3].
    #[arg(long)]
    pub peers: Option<usize>,
    /// Datagrams per second per flow: each peer→host sender, each host→peer pair, each host's
    /// broadcast.
    #[arg(long, default_value_t = 60.0)]
    pub rate: f64,
    /// Payload bytes per datagram, 32 to 1150; several (comma-separated) give one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize])]
    pub payload: Vec<usize>,
    /// Traffic patterns; several (comma-separated) give one run each. `game` is peer-to-host
    /// plus host broadcast.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Pattern::Game])]
    pub pattern: Vec<Pattern>,
    /// Measurement window of each run [default: 10s; --quick: 2s].
    #[arg(long, value_parser = crate::parse_duration)]
    pub duration: Option<Duration>,
    /// Traffic before each window, not counted [default: 2s; --quick: 500ms].
    #[arg(long, value_parser = crate::parse_duration)]
    pub warmup: Option<Duration>,
    /// Run the same traffic through a plain UDP forwarder (the ceiling) and report Baton's
    /// figures as ratios of the forwarder's
    /// (`--compare-ceiling=false` to skip).
    #[arg(
        long,
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub compare_ceiling: bool,
    /// Same as `--compare-ceiling=false`.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Also run the same traffic through another relay, in the same run, and report Baton's
    /// figures as ratios of its: `coturn` starts Debian's `turnserver` (plain UDP TURN,
    /// hosts allocated, peers plain UDP; skipped with a note when it is not installed).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "RELAY")]
    pub compare: Vec<Compare>,
    /// Also raise the rate step by step and report the highest with loss under 0.1 % (first
    /// pattern and payload).
    #[arg(long)]
    pub find_max: bool,
    /// `--find-max`: factor between steps.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// `--find-max`: most steps before refining [default: 10; --quick: 4].
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// `--find-max`: measurement window of each step [default: 4s; --quick: 1s].
    #[arg(long, value_parser = crate::parse_duration)]
    pub step_duration: Option<Duration>,
    /// `--find-max`: bisection steps between the last passing and the first failing rate.
    #[arg(long, default_value_t = 2)]
    pub refine_steps: usize,
    /// Sender tasks [default: twice the generator threads].
    #[arg(long)]
    pub sender_tasks: Option<usize>,
    /// Allocations set up at once.
    #[arg(long, default_value_t = 32)]
    pub setup_concurrency: usize,
}

/// Another relay to compare Baton with (`--compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compare {
    /// Debian's `turnserver` (coturn) on loopback, driven over TURN/UDP with ChannelData.
    Coturn,
}

impl LoadArgs {
    /// Adds coturn to the comparisons (`all --quick` does: it is cheap at those sizes and
    /// skips itself when `turnserver` is absent).
    pub fn compare_coturn(&mut self) {
        if !self.compare.contains(&Compare::Coturn) {
            self.compare.push(Compare::Coturn);
        }
    }
}

/// [`LoadArgs`] with defaults applied.
#[derive(Debug, Clone)]
struct Config {
    allocations: usize,
    members: usize,
    rate: f64,
    payloads: Vec<usize>,
    patterns: Vec<Pattern>,
    duration: Duration,
    warmup: Duration,
    ceiling: bool,
    coturn: bool,
    find_max: bool,
    step_factor: f64,
    max_steps: usize,
    step_duration: Duration,
    step_warmup: Duration,
    refine_steps: usize,
    sender_tasks: usize,
    setup_concurrency: usize,
}

impl LoadArgs {
    fn resolve(&self, global: &Global) -> anyhow::Result<Config> {
        let quick = global.quick;
        let pick = |v: Option<usize>, normal: usize, small: usize| {
            v.unwrap_or(if quick { small } else { normal })
        };
        let pick_d = |v: Option<Duration>, normal: u64, small: u64| {
            v.unwrap_or(Duration::from_millis(if quick { small } else { normal }))
        };
        let c = Config {
            allocations: pick(self.allocations, 50, 4),
            members: pick(self.peers, 4, 3) + 1,
            rate: self.rate,
            payloads: self.payload.clone(),
            patterns: self.pattern.clone(),
            duration: pick_d(self.duration, 10_000, 2_000),
            warmup: pick_d(self.warmup, 2_000, 500),
            ceiling: self.compare_ceiling && !self.no_ceiling,
            coturn: self.compare.contains(&Compare::Coturn),
            find_max: self.find_max,
            step_factor: self.step_factor,
            max_steps: pick(self.max_steps, 10, 4).min(40),
            step_duration: pick_d(self.step_duration, 4_000, 1_000),
            step_warmup: pick_d(None, 1_000, 300),
            refine_steps: self.refine_steps.min(10),
            sender_tasks: self.sender_tasks.unwrap_or(2 * global.generator_threads()),
            setup_concurrency: self.setup_concurrency.max(1),
        };
        if c.allocations == 0 || c.members < 2 {
            bail!("need at least one allocation with at least one peer");
        }
        if c.members > usize::from(baton_protocol::MAX_PEERS_LIMIT) {
            bail!(
                "at most {} members per allocation",
                baton_protocol::MAX_PEERS_LIMIT
            );
        }
        if let Some(p) = c
            .payloads
            .iter()
            .find(|p| !(STAMP_LEN..=baton_protocol::MAX_DATAGRAM_PAYLOAD).contains(p))
        {
            bail!(
                "payload {p} out of range: {STAMP_LEN} (the bench's stamp) to {}",
                baton_protocol::MAX_DATAGRAM_PAYLOAD
            );
        }
        if c.payloads.is_empty() || c.patterns.is_empty() {
            bail!("need at least one payload and one pattern");
        }
        if !(c.rate > 0.0 && c.rate <= 100_000.0) {
            bail!("--rate must be above 0 and at most 100000 per flow");
        }
        if !(c.step_factor > 1.0 && c.step_factor <= 10.0) {
            bail!("--step-factor must be above 1 and at most 10");
        }
        if c.duration.is_zero() || c.step_duration.is_zero() {
            bail!("durations must be above zero");
        }
        Ok(c)
    }
}

/// Runs the load benchmark and adds it to `report`.
pub async fn run(global: &Global, args: &LoadArgs, report: &mut Report) -> anyhow::Result<()> {
    let config = args.resolve(global)?;
    let mut progress = Progress::new();
    let clients_total = config.allocations * config.members;
    let needs = Needs {
        connections: clients_total + 100,
        allocations: config.allocations + 10,
        members: config.members,
    };
    let (mut load, baton_runs, baton_max) = Relay::run_bench(
        global,
        needs,
        "load",
        &mut progress,
        async |relay, progress| baton_side(global, &config, relay, report, progress).await,
    )
    .await?;

    let mut ceiling_runs = Vec::new();
    let mut ceiling_max = None;
    if config.ceiling {
        let (runs, max) = ceiling_side(&config, report, &mut progress).await?;
        ceiling_runs = runs;
        ceiling_max = max;
    }
    let mut coturn_runs = Vec::new();
    let mut coturn_max = None;
    if config.coturn {
        match crate::coturn::find() {
            None => {
                let why = "no `turnserver` on PATH (Debian: apt-get install coturn)";
                note(&mut progress, format!("coturn comparison skipped: {why}"));
                load.coturn = Some(format!("skipped: {why}"));
            }
            // A failure on coturn's side is reported; Baton's and the forwarder's figures stand.
            Some(bin) => match coturn_side(&bin, &config, report, &mut progress).await {
                Ok((description, runs, max)) => {
                    load.coturn = Some(description);
                    coturn_runs = runs;
                    coturn_max = max;
                }
                Err(e) => {
                    report
                        .errors
                        .push(format!("coturn comparison failed: {e:#}"));
                    load.coturn = Some(format!("failed: {e:#}"));
                }
            },
        }
    }
    let mut ceiling_runs = ceiling_runs.into_iter();
    let mut coturn_runs = coturn_runs.into_iter();
    load.cases = baton_runs
        .into_iter()
        .map(|baton| {
            let ceiling = ceiling_runs.next();
            let ratio = ceiling.as_ref().map(|c| Ratio::of(&baton, c));
            let coturn = coturn_runs.next();
            let coturn_ratio = coturn.as_ref().map(|c| Ratio::of(&baton, c));
            CaseReport {
                baton,
                ceiling,
                ratio,
                coturn,
                coturn_ratio,
            }
        })
        .collect();
    if let Some(baton) = baton_max {
        let ratio_to = |other: &Option<MaxSearch>| match (other, baton.max_delivered_per_s) {
            (Some(c), Some(b)) => c.max_delivered_per_s.map(|c| b / c),
            _ => None,
        };
        let ratio = ratio_to(&ceiling_max);
        let coturn_ratio = ratio_to(&coturn_max);
        load.find_max = Some(FindMaxReport {
            pattern: config.patterns[0],
            payload_bytes: config.payloads[0],
            baton,
            ceiling: ceiling_max,
            ratio,
            coturn: coturn_max,
            coturn_ratio,
        });
    }
    report.load = Some(load);
    Ok(())
}

/// Every (pattern, payload) pair, in order.
fn specs(config: &Config) -> Vec<RunSpec> {
    config
        .patterns
        .iter()
        .flat_map(|&pattern| {
            config.payloads.iter().map(move |&payload| RunSpec {
                pattern,
                payload,
                rate: config.rate,
                warmup: config.warmup,
                duration: config.duration,
            })
        })
        .collect()
}

/// Records a run's correctness problems in the report.
fn check(report: &mut Report, r: &TrafficReport) {
    let run = format!("{} {} {}B", r.target, r.pattern.name(), r.payload_bytes);
    if r.errors.any() {
        report.errors.push(format!(
            "{run}: {} misdelivered, {} duplicated, {} with a wrong source, {} malformed datagrams",
            r.errors.misdelivered,
            r.errors.duplicates,
            r.errors.source_mismatch,
            r.errors.malformed
        ));
    }
    if r.membership_events > 0 {
        report.errors.push(format!(
            "{run}: clients saw {} departures or migrations during the run",
            r.membership_events
        ));
    }
}
