//! The load run: N allocations × M peers over loopback, each pattern × payload measured through
//! the relay and then through the plain UDP forwarder (the ceiling), and optionally the highest
//! rate the relay carries with loss under 0.1 % (`--find-max`).
//!
//! Clients are set up once per target and reused by every run; each run has its own id, so
//! stragglers of one never count in the next. Relay and forwarder never run at the same time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::ceiling::{self, Forwarder};
use crate::probe::{Cpu, KernelUdp, Sample, Server};
use crate::quic::{self, Client, ControlEvents};
use crate::relay::{Needs, Relay};
use crate::report::{
    note, CaseReport, FindMaxReport, LoadReport, MaxSearch, Progress, Ratio, Report, RunFigures,
    ServerMetrics, Step, TrafficReport,
};
use crate::traffic::{self, Pattern, Receiver, RunSpec, Shared, Topology, Transport, STAMP_LEN};
use crate::{procstat, Global};

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

/// A target ready for traffic: its clients, their receivers, and where to read its counters.
struct Target<'a> {
    name: &'static str,
    shared: Arc<Shared>,
    transport: Arc<Transport>,
    server: Server,
    relay: Option<&'a Relay>,
    events: Option<Arc<ControlEvents>>,
    sender_tasks: usize,
}

impl Target<'_> {
    /// One run: traffic, readings at the window's edges, the counts.
    async fn run(&self, spec: &RunSpec, progress: &mut Progress) -> anyhow::Result<TrafficReport> {
        let flows = traffic::flows(&self.shared.topo, spec.pattern);
        let label = format!(
            "[{} {} {}B {}/s]",
            self.name,
            spec.pattern.name(),
            spec.payload,
            spec.rate
        );
        let running = traffic::start(
            &self.shared,
            &self.transport,
            &flows,
            spec,
            self.sender_tasks,
        );
        let mut meter = Meter::new(self.server.pid, &self.shared, &running.sent_progress);
        wait_until(running.window_start, progress, |p| {
            meter.line(p, &label, "warm-up", running.window_start)
        })
        .await;
        let before = Sample::take(self.server);
        let metrics_before = self.metrics().await;
        if let Some(events) = &self.events {
            events.take_dropped();
            events.take_membership();
        }
        wait_until(running.window_end, progress, |p| {
            meter.line(p, &label, "window", running.window_end)
        })
        .await;
        let after = Sample::take(self.server);
        let metrics_after = self.metrics().await;
        let (send, recv) = running.finish().await;
        progress.done();
        if let Some(relay) = self.relay {
            relay.check_alive()?;
        }
        let server_metrics = match (metrics_before, metrics_after) {
            (Some(a), Some(b)) => Some(ServerMetrics {
                forwarded: (b.value("baton_datagrams_forwarded_total")
                    - a.value("baton_datagrams_forwarded_total"))
                .max(0.0) as u64,
                dropped: b.delta_by_label(&a, "baton_datagrams_dropped_total", "reason"),
            }),
            _ => None,
        };
        let (reported_drops, membership_events) = match &self.events {
            Some(e) => (e.take_dropped(), e.take_membership()),
            None => Default::default(),
        };
        Ok(TrafficReport::new(RunFigures {
            target: self.name,
            spec,
            flows: flows.len(),
            send,
            recv,
            cpu: Cpu::between(&before, &after),
            kernel_udp: KernelUdp::between(&before, &after),
            server_metrics,
            reported_drops,
            membership_events,
            server_mem_kib: after.server.map(|s| (s.rss_kib, s.hwm_kib)),
        }))
    }

    async fn metrics(&self) -> Option<baton_tests::relay_process::Metrics> {
        self.relay?.metrics().await
    }

    /// `--find-max`: raises the rate by `step_factor` until a step fails, then bisects.
    async fn find_max(
        &self,
        config: &Config,
        pattern: Pattern,
        payload: usize,
        progress: &mut Progress,
    ) -> anyhow::Result<MaxSearch> {
        let spec = |rate: f64| RunSpec {
            pattern,
            payload,
            rate,
            warmup: config.step_warmup,
            duration: config.step_duration,
        };
        let mut steps = Vec::new();
        let mut best: Option<TrafficReport> = None;
        let mut fail: Option<TrafficReport> = None;
        let mut rate = config.rate;
        for _ in 0..config.max_steps {
            let r = self.run(&spec(rate), progress).await?;
            steps.push(Step::of(&r));
            if r.pass {
                best = Some(r);
                rate *= config.step_factor;
                if rate > 100_000.0 {
                    break;
                }
            } else {
                fail = Some(r);
                break;
            }
            // Let queues empty before the next step.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for _ in 0..config.refine_steps {
            let (Some(lo), Some(hi)) = (&best, &fail) else {
                break;
            };
            let mid = (lo.rate_per_flow * hi.rate_per_flow).sqrt();
            if mid / lo.rate_per_flow < 1.03 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = self.run(&spec(mid), progress).await?;
            steps.push(Step::of(&r));
            if r.pass {
                best = Some(r);
            } else {
                fail = Some(r);
            }
        }
        let stopped = match &fail {
            None => "no step lost datagrams: raise --max-steps or --step-factor".to_owned(),
            Some(f) => {
                let unsent = (f.generator.local_drops + f.generator.skipped) as f64;
                if unsent > 0.001 * f.offered_per_s * f.window_s {
                    format!(
                        "the load generator could not offer {:.1}/s per flow; the server's limit may be higher",
                        f.rate_per_flow
                    )
                } else {
                    format!(
                        "{:.3} % loss at {:.1}/s per flow: {}",
                        f.loss_pct, f.rate_per_flow, f.saturated
                    )
                }
            }
        };
        Ok(MaxSearch {
            target: self.name,
            steps,
            max_rate_per_flow: best.as_ref().map(|b| b.rate_per_flow),
            max_delivered_per_s: best.as_ref().map(|b| b.delivered_per_s),
            stopped,
        })
    }
}

/// Live figures for the progress line.
struct Meter<'a> {
    pid: Option<u32>,
    shared: &'a Shared,
    sent: &'a AtomicU64,
    last: (Instant, u64, u64, Option<f64>, Option<f64>),
}

impl<'a> Meter<'a> {
    fn new(pid: Option<u32>, shared: &'a Shared, sent: &'a AtomicU64) -> Meter<'a> {
        Meter {
            pid,
            shared,
            sent,
            last: (Instant::now(), 0, 0, None, None),
        }
    }

    fn line(&mut self, progress: &mut Progress, label: &str, phase: &str, until: Instant) {
        progress.update(|| {
            let now = Instant::now();
            let sent = self.sent.load(Ordering::Relaxed);
            let recv = self.shared.received_so_far();
            let server = self
                .pid
                .and_then(|p| procstat::process(Some(p)))
                .map(|s| s.cpu_s);
            let me = procstat::process(None).map(|s| s.cpu_s);
            let (t0, s0, r0, srv0, me0) = self.last;
            let dt = now.duration_since(t0).as_secs_f64().max(1e-3);
            let cores = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => format!("{:.2}", (b - a) / dt),
                _ => "-".to_owned(),
            };
            let line = format!(
                "{label} {phase} {:.1}s left | sent {:.0}/s recv {:.0}/s | server {} cores, generator {} cores",
                until.saturating_duration_since(now).as_secs_f64(),
                sent.saturating_sub(s0) as f64 / dt,
                recv.saturating_sub(r0) as f64 / dt,
                cores(srv0, server),
                cores(me0, me),
            );
            self.last = (now, sent, recv, server, me);
            line
        });
    }
}

/// Sleeps until `deadline`, calling `tick` every 200 ms.
async fn wait_until(
    deadline: Instant,
    progress: &mut Progress,
    mut tick: impl FnMut(&mut Progress),
) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
        tick(progress);
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
    let relay = Relay::start(global, needs).await?;
    note(&mut progress, format!("load: relay {}", relay.description));
    let result = baton_side(global, &config, &relay, report, &mut progress).await;
    relay.stop().await;
    let (mut load, baton_runs, baton_max) = result?;

    let mut ceiling_runs = Vec::new();
    let mut ceiling_max = None;
    if config.ceiling {
        let (runs, max) = ceiling_side(&config, report, &mut progress).await?;
        ceiling_runs = runs;
        ceiling_max = max;
    }
    let mut ceiling_runs = ceiling_runs.into_iter();
    load.cases = baton_runs
        .into_iter()
        .map(|baton| {
            let ceiling = ceiling_runs.next();
            let ratio = ceiling.as_ref().map(|c| Ratio::of(&baton, c));
            CaseReport {
                baton,
                ceiling,
                ratio,
            }
        })
        .collect();
    if let Some(baton) = baton_max {
        let ratio = match (&ceiling_max, baton.max_delivered_per_s) {
            (Some(c), Some(b)) => c.max_delivered_per_s.map(|c| b / c),
            _ => None,
        };
        load.find_max = Some(FindMaxReport {
            pattern: config.patterns[0],
            payload_bytes: config.payloads[0],
            baton,
            ceiling: ceiling_max,
            ratio,
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
    if r.errors.any() {
        report.errors.push(format!(
            "{} {} {}B: {} misdelivered, {} duplicated, {} with a wrong source, {} malformed datagrams",
            r.target,
            r.pattern.name(),
            r.payload_bytes,
            r.errors.misdelivered,
            r.errors.duplicates,
            r.errors.source_mismatch,
            r.errors.malformed
        ));
    }
    if r.membership_events > 0 {
        report.errors.push(format!(
            "{} {} {}B: clients saw {} departures or migrations during the run",
            r.target,
            r.pattern.name(),
            r.payload_bytes,
            r.membership_events
        ));
    }
}

/// What the relay half of the load run produces: the section (without cases), the runs and
/// the `--find-max` search.
type BatonSide = (LoadReport, Vec<TrafficReport>, Option<MaxSearch>);

/// The relay half: set-up, every run, `--find-max`, teardown.
async fn baton_side(
    global: &Global,
    config: &Config,
    relay: &Relay,
    report: &mut Report,
    progress: &mut Progress,
) -> anyhow::Result<BatonSide> {
    let before = relay.proc_sample();
    let pool = Arc::new(quic::Clients::new(relay, global.endpoints)?);
    let started = Instant::now();
    let (mut clients, topo) = setup(
        &pool,
        config.allocations,
        config.members,
        config.setup_concurrency,
        "load",
        progress,
    )
    .await?;
    let setup_s = started.elapsed().as_secs_f64();
    note(
        progress,
        format!(
            "load: {} clients connected and bound in {setup_s:.1} s",
            clients.len()
        ),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected = relay.proc_sample();

    let shared = Shared::new(topo, 16);
    let events = Arc::new(ControlEvents::default());
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for (g, client) in clients.iter_mut().enumerate() {
        if let Some(recv) = client.recv.take() {
            quic::spawn_control_reader(&mut tasks, recv, events.clone());
        }
        let conn = client.conn.clone();
        let mut receiver = Receiver::new(shared.clone(), g as u32);
        let lost = lost.clone();
        tasks.spawn(async move {
            loop {
                match conn.read_datagram().await {
                    Ok(d) => receiver.on_datagram(&d),
                    Err(quinn::ConnectionError::LocallyClosed) => return,
                    Err(_) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }
    let target = Target {
        name: "baton",
        shared: shared.clone(),
        transport: Arc::new(Transport::Quic(
            clients.iter().map(|c| c.conn.clone()).collect(),
        )),
        server: relay.server(),
        relay: Some(relay),
        events: Some(events),
        sender_tasks: config.sender_tasks,
    };
    let mut runs = Vec::new();
    let mut max = None;
    let outcome = async {
        for spec in specs(config) {
            let r = target.run(&spec, progress).await?;
            check(report, &r);
            runs.push(r);
        }
        if config.find_max {
            let search = target
                .find_max(config, config.patterns[0], config.payloads[0], progress)
                .await?;
            max = Some(search);
        }
        anyhow::Ok(())
    }
    .await;
    let lost = lost.load(Ordering::Relaxed);
    if lost > 0 {
        report.errors.push(format!(
            "{lost} client connections to the relay were lost during the load run"
        ));
    }
    close_all(&clients, config.members);
    pool.wait_idle().await;
    tasks.abort_all();
    outcome?;
    let kib = |s: Option<procstat::ProcSample>| s.map(|s| s.rss_kib as f64);
    let per_client = match (kib(before), kib(connected)) {
        (Some(a), Some(b)) => Some((b - a) / clients.len() as f64),
        _ => None,
    };
    let load = LoadReport {
        relay: relay.description.clone(),
        allocations: config.allocations,
        members: config.members,
        clients: clients.len(),
        setup_s,
        relay_rss_before_mib: kib(before).map(|k| k / 1024.0),
        relay_rss_connected_mib: kib(connected).map(|k| k / 1024.0),
        relay_kib_per_client: per_client,
        cases: Vec::new(),
        find_max: None,
    };
    Ok((load, runs, max))
}

/// Connects and binds every client of `allocations × members`: per allocation a host
/// (`CreateAllocation`), then its peers (`Join` by code) one after another; `concurrency`
/// allocations at a time. Fails if any client fails.
pub async fn setup(
    pool: &Arc<quic::Clients>,
    allocations: usize,
    members: usize,
    concurrency: usize,
    label: &str,
    progress: &mut Progress,
) -> anyhow::Result<(Vec<Client>, Topology)> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let done = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for alloc in 0..allocations {
        let (pool, permits, done) = (pool.clone(), permits.clone(), done.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let first = alloc * members;
            let host = pool
                .create(first, members as u16)
                .await
                .with_context(|| format!("allocation {alloc}: host"))?;
            done.fetch_add(1, Ordering::Relaxed);
            let mut clients = vec![host.client];
            for i in 1..members {
                let peer = pool
                    .join(first + i, host.code)
                    .await
                    .with_context(|| format!("allocation {alloc}: peer {i}"))?;
                clients.push(peer.client);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((alloc, clients))
        });
    }
    let total = allocations * members;
    let mut by_alloc: Vec<Option<Vec<Client>>> = (0..allocations).map(|_| None).collect();
    let started = Instant::now();
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(joined) => {
                    let (alloc, clients) = joined.context("set-up task")??;
                    by_alloc[alloc] = Some(clients);
                }
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                progress.update(|| format!(
                    "{label}: set-up {}/{total} clients, {:.1} s",
                    done.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    }
    progress.done();
    let clients: Vec<Client> = by_alloc.into_iter().flatten().flatten().collect();
    if clients.len() != total {
        bail!("only {} of {total} clients were set up", clients.len());
    }
    let topo = Topology {
        allocations,
        members,
        peer_ids: clients.iter().map(|c| c.peer).collect(),
    };
    Ok((clients, topo))
}

/// Closes every client, peers first so no host's departure starts a migration.
pub fn close_all(clients: &[Client], members: usize) {
    for (g, c) in clients.iter().enumerate() {
        if g % members != 0 {
            c.close();
        }
    }
    for c in clients.iter().step_by(members.max(1)) {
        c.close();
    }
}

/// The ceiling half: the forwarder, its clients, the same runs and search.
async fn ceiling_side(
    config: &Config,
    report: &mut Report,
    progress: &mut Progress,
) -> anyhow::Result<(Vec<TrafficReport>, Option<MaxSearch>)> {
    // As many workers as the relay's runtime has: tokio's default, one per CPU.
    let threads = procstat::cpus();
    let forwarder = Forwarder::start(threads, 4 * 3600).await?;
    note(
        progress,
        format!(
            "ceiling: UDP forwarder at {} ({threads} threads, pid {})",
            forwarder.addr,
            forwarder.pid.map_or_else(|| "?".into(), |p| p.to_string())
        ),
    );
    let result = async {
        let (sockets, topo) =
            ceiling::clients(forwarder.addr, config.allocations, config.members).await?;
        let shared = Shared::new(topo, 16);
        let mut tasks = JoinSet::new();
        for (g, socket) in sockets.iter().enumerate() {
            let socket = socket.clone();
            let mut receiver = Receiver::new(shared.clone(), g as u32);
            tasks.spawn(async move {
                let mut buf = vec![0u8; 2048];
                // Ends when aborted, or when the forwarder is gone (recv fails).
                while let Ok(n) = socket.recv(&mut buf).await {
                    receiver.on_datagram(&buf[..n]);
                }
            });
        }
        let target = Target {
            name: "udp-forwarder",
            shared,
            transport: Arc::new(Transport::Udp(sockets)),
            server: Server {
                pid: forwarder.pid,
                port: Some(forwarder.addr.port()),
            },
            relay: None,
            events: None,
            sender_tasks: config.sender_tasks,
        };
        let mut runs = Vec::new();
        for spec in specs(config) {
            let r = target.run(&spec, progress).await?;
            check(report, &r);
            runs.push(r);
        }
        let max = if config.find_max {
            Some(
                target
                    .find_max(config, config.patterns[0], config.payloads[0], progress)
                    .await?,
            )
        } else {
            None
        };
        tasks.abort_all();
        anyhow::Ok((runs, max))
    }
    .await;
    forwarder.stop().await;
    result
}
