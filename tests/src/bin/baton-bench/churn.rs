//! Control-plane benchmarks: allocation churn (how many create + join + close cycles the relay
//! completes per second) and join-by-code latency.
//!
//! Every cycle uses fresh connections, because a connection binds once for life: a host
//! connects and creates an allocation, a peer connects and joins it by code, then the peer and
//! the host leave (peer first, so the host's departure closes the allocation instead of
//! starting a migration). Workers run cycles concurrently until the count or the time limit is
//! reached.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::probe::{Cpu, KernelUdp, Sample};
use crate::quic::{self, ControlEvents};
use crate::relay::{Needs, Relay};
use crate::report::{ChurnReport, JoinReport, Latency, Progress, Report};
use crate::traffic::new_histogram;
use crate::Global;

/// Options of the churn benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct ChurnArgs {
    /// Create + join + close cycles [default: 2000; --quick: 100].
    #[arg(long)]
    pub churn_cycles: Option<usize>,
    /// Cycles run at once.
    #[arg(long, default_value_t = 32)]
    pub churn_concurrency: usize,
    /// Stop starting cycles after this long, whatever the count [default: 60s].
    #[arg(long, value_parser = crate::parse_duration, default_value = "60s")]
    pub churn_max_time: Duration,
    /// Every connection runs a full TLS handshake (the clients keep no session tickets). By
    /// default they resume, as the SDK does within one `ClientConfig`.
    #[arg(long)]
    pub churn_full_handshakes: bool,
}

/// Options of the join-latency benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    /// Joins to time [default: 2000; --quick: 100].
    #[arg(long)]
    pub joins: Option<usize>,
    /// Joins at once (low, so latency is not queueing).
    #[arg(long, default_value_t = 4)]
    pub join_concurrency: usize,
    /// Allocations the joins go into (each joiner leaves right after, freeing its seat).
    #[arg(long, default_value_t = 10)]
    pub join_allocations: usize,
    /// Stop starting joins after this long, whatever the count.
    #[arg(long, value_parser = crate::parse_duration, default_value = "60s")]
    pub join_max_time: Duration,
}

/// Latency histograms of one worker, merged at the end.
struct Timings {
    hists: Vec<Histogram<u64>>,
    failures: BTreeMap<String, u64>,
    completed: usize,
}

impl Timings {
    fn new(n: usize) -> Timings {
        Timings {
            hists: (0..n).map(|_| new_histogram()).collect(),
            failures: BTreeMap::new(),
            completed: 0,
        }
    }

    fn record(&mut self, i: usize, d: Duration) {
        self.hists[i].saturating_record((d.as_nanos() as u64).max(1));
    }

    fn fail(&mut self, stage: &str, err: &anyhow::Error) {
        let reason = format!("{stage}: {}", root(err));
        *self.failures.entry(reason).or_default() += 1;
    }

    fn merge(&mut self, other: Timings) {
        for (a, b) in self.hists.iter_mut().zip(&other.hists) {
            let _ = a.add(b);
        }
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.completed += other.completed;
    }

    fn latency(&self, i: usize) -> Latency {
        Latency::from_ns(&self.hists[i])
    }
}

/// An error and its causes on one line (e.g. "handshake: timed out").
fn root(err: &anyhow::Error) -> String {
    format!("{err:#}")
}

/// Merges the workers' timings as they finish (`hists` histograms each), writing `line` on
/// the progress line every 250 ms meanwhile. Fails if a worker of `bench` panicked.
async fn gather(
    mut set: JoinSet<Timings>,
    hists: usize,
    bench: &str,
    progress: &mut Progress,
    mut line: impl FnMut() -> String,
) -> anyhow::Result<Timings> {
    let mut total = Timings::new(hists);
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(t)) => total.merge(t),
                Some(Err(e)) => bail!("{bench} worker failed: {e}"),
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => progress.update(&mut line),
        }
    }
    Ok(total)
}

/// Records in `report`, as an error, how many of the `attempted` `units` of `bench` failed,
/// if any did.
fn record_failures(
    report: &mut Report,
    bench: &str,
    units: &str,
    attempted: usize,
    completed: usize,
    failures: &BTreeMap<String, u64>,
) {
    if completed < attempted {
        report.errors.push(format!(
            "{bench}: {} of {attempted} {units} failed: {failures:?}",
            attempted - completed
        ));
    }
}

/// Runs the churn benchmark and adds it to `report`.
pub async fn run_churn(
    global: &Global,
    args: &ChurnArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let cycles = args
        .churn_cycles
        .unwrap_or(if global.quick { 100 } else { 2000 });
    let concurrency = args.churn_concurrency.clamp(1, 4096);
    if cycles == 0 {
        bail!("--churn-cycles must be at least 1");
    }
    let needs = Needs {
        connections: 2 * concurrency + 100,
        allocations: concurrency + 10,
        members: 2,
    };
    let churn = Relay::run_bench(
        global,
        needs,
        "churn",
        &mut Progress::new(),
        async |relay, progress| churn(global, args, relay, cycles, concurrency, progress).await,
    )
    .await?;
    record_failures(
        report,
        "churn",
        "cycles",
        churn.attempted,
        churn.completed,
        &churn.failures,
    );
    report.churn = Some(churn);
    Ok(())
}

/// Histogram index: host handshake.
const HOST_CONNECT: usize = 0;
/// Histogram index: `CreateAllocation` round trip.
const CREATE: usize = 1;
/// Histogram index: peer handshake.
const PEER_CONNECT: usize = 2;
/// Histogram index: `Join` round trip.
const JOIN: usize = 3;
/// Histogram index: peer close until the host reads `PeerLeft`.
const LEAVE: usize = 4;
/// Histogram index: the whole cycle.
const CYCLE: usize = 5;
/// Histograms per churn worker.
const CHURN_HISTS: usize = 6;

/// Runs the cycles against `relay` and measures them.
async fn churn(
    global: &Global,
    args: &ChurnArgs,
    relay: &Relay,
    cycles: usize,
    concurrency: usize,
    progress: &mut Progress,
) -> anyhow::Result<ChurnReport> {
    let pool = Arc::new(quic::Clients::with_resumption(
        relay,
        global.endpoints,
        !args.churn_full_handshakes,
    )?);
    let rss_before = relay.proc_sample().map(|s| s.rss_kib as f64 / 1024.0);
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + args.churn_max_time;
    let before = Sample::take(relay.server());
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (pool, next) = (pool.clone(), next.clone());
        set.spawn(async move {
            let mut t = Timings::new(CHURN_HISTS);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cycles || Instant::now() >= deadline {
                    break;
                }
                let start = Instant::now();
                let mut host = match pool.create(2 * i, 2).await {
                    Ok(h) => h,
                    Err(e) => {
                        t.fail("create", &e);
                        continue;
                    }
                };
                t.record(HOST_CONNECT, host.connect);
                t.record(CREATE, host.request);
                match pool.join(2 * i + 1, host.code).await {
                    Ok(peer) => {
                        t.record(PEER_CONNECT, peer.connect);
                        t.record(JOIN, peer.request);
                        // The peer leaves first and the host waits until it is told, so its
                        // own departure closes the allocation (no migration).
                        let left = Instant::now();
                        peer.client.close();
                        match wait_peer_left(&mut host.client).await {
                            Ok(()) => {
                                t.record(LEAVE, left.elapsed());
                                t.record(CYCLE, start.elapsed());
                                t.completed += 1;
                            }
                            Err(e) => t.fail("leave", &e),
                        }
                        host.client.close();
                    }
                    Err(e) => {
                        t.fail("join", &e);
                        host.client.close();
                    }
                }
            }
            t
        });
    }
    let total = gather(set, CHURN_HISTS, "churn", progress, || {
        let n = next.load(Ordering::Relaxed).min(cycles);
        format!(
            "churn: {n}/{cycles} cycles started, {:.1} s, {:.0}/s",
            started.elapsed().as_secs_f64(),
            n as f64 / started.elapsed().as_secs_f64().max(1e-3)
        )
    })
    .await?;
    let elapsed = started.elapsed();
    let after = Sample::take(relay.server());
    progress.done();
    relay.check_alive()?;
    let attempted = next.load(Ordering::Relaxed).min(cycles);
    let drained = relay.wait_empty(Duration::from_secs(15)).await;
    pool.wait_idle().await;
    let cpu = Cpu::between(&before, &after);
    let rss_after = relay.proc_sample().map(|s| s.rss_kib as f64 / 1024.0);
    Ok(ChurnReport {
        relay: relay.description.clone(),
        attempted,
        completed: total.completed,
        concurrency,
        tls: if args.churn_full_handshakes {
            "full"
        } else {
            "resumed"
        },
        elapsed_s: elapsed.as_secs_f64(),
        allocations_per_s: total.completed as f64 / elapsed.as_secs_f64().max(1e-9),
        host_connect: total.latency(HOST_CONNECT),
        create: total.latency(CREATE),
        peer_connect: total.latency(PEER_CONNECT),
        join: total.latency(JOIN),
        leave_notice: total.latency(LEAVE),
        cycle: total.latency(CYCLE),
        failures: total.failures,
        relay_cpu_s_per_1000: cpu
            .server_cpu_s
            .filter(|_| total.completed > 0)
            .map(|s| s / total.completed as f64 * 1000.0),
        kernel_udp: KernelUdp::between(&before, &after),
        cpu,
        drained_s: drained.map(|d| d.as_secs_f64()),
        relay_rss_before_mib: rss_before,
        relay_rss_after_mib: rss_after,
    })
}

/// Reads the host's control stream until `PeerLeft` (at most [`quic::STEP_TIMEOUT`]).
async fn wait_peer_left(host: &mut quic::Client) -> anyhow::Result<()> {
    let Some(recv) = host.recv.as_mut() else {
        bail!("no control stream");
    };
    tokio::time::timeout(quic::STEP_TIMEOUT, async {
        loop {
            if let Some(baton_protocol::ServerMessage::PeerLeft { .. }) =
                quic::read_message(recv).await?
            {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no PeerLeft within {:?}", quic::STEP_TIMEOUT))?
}

/// Runs the join-latency benchmark and adds it to `report`.
pub async fn run_join(global: &Global, args: &JoinArgs, report: &mut Report) -> anyhow::Result<()> {
    let joins = args.joins.unwrap_or(if global.quick { 100 } else { 2000 });
    let concurrency = args.join_concurrency.clamp(1, 1024);
    let allocations = args.join_allocations.clamp(1, 1000);
    if joins == 0 {
        bail!("--joins must be at least 1");
    }
    let needs = Needs {
        connections: allocations + concurrency + 100,
        allocations: allocations + 10,
        members: 2 + concurrency,
    };
    let join = Relay::run_bench(
        global,
        needs,
        "join",
        &mut Progress::new(),
        async |relay, progress| {
            join(
                global,
                args,
                relay,
                joins,
                concurrency,
                allocations,
                progress,
            )
            .await
        },
    )
    .await?;
    record_failures(
        report,
        "join",
        "joins",
        join.attempted,
        join.completed,
        &join.failures,
    );
    report.join = Some(join);
    Ok(())
}

/// Histogram index: joiner handshake.
const J_CONNECT: usize = 0;
/// Histogram index: `Join` round trip.
const J_JOIN: usize = 1;
/// Histogram index: handshake plus join.
const J_TOTAL: usize = 2;

/// Opens the host allocations, then times the joins into them.
async fn join(
    global: &Global,
    args: &JoinArgs,
    relay: &Relay,
    joins: usize,
    concurrency: usize,
    allocations: usize,
    progress: &mut Progress,
) -> anyhow::Result<JoinReport> {
    let pool = Arc::new(quic::Clients::new(relay, global.endpoints)?);
    // Hosts stay for the whole run; each allocation has a seat per concurrent joiner.
    let max_peers = u16::try_from(concurrency + 1).unwrap_or(u16::MAX);
    let events = Arc::new(ControlEvents::default());
    let mut readers = JoinSet::new();
    let mut hosts = Vec::with_capacity(allocations);
    for a in 0..allocations {
        let mut host = pool.create(a, max_peers).await?;
        if let Some(recv) = host.client.recv.take() {
            quic::spawn_control_reader(&mut readers, recv, events.clone());
        }
        hosts.push(host);
    }
    let codes: Arc<Vec<_>> = Arc::new(hosts.iter().map(|h| h.code).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + args.join_max_time;
    let before = Sample::take(relay.server());
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (pool, next, codes) = (pool.clone(), next.clone(), codes.clone());
        set.spawn(async move {
            let mut t = Timings::new(3);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= joins || Instant::now() >= deadline {
                    break;
                }
                let code = codes[i % codes.len()];
                match pool.join(allocations + i, code).await {
                    Ok(peer) => {
                        t.record(J_CONNECT, peer.connect);
                        t.record(J_JOIN, peer.request);
                        t.record(J_TOTAL, peer.connect + peer.request);
                        t.completed += 1;
                        peer.client.close();
                    }
                    Err(e) => t.fail("join", &e),
                }
            }
            t
        });
    }
    let total = gather(set, 3, "join", progress, || {
        let n = next.load(Ordering::Relaxed).min(joins);
        format!(
            "join: {n}/{joins} joins started, {:.1} s",
            started.elapsed().as_secs_f64()
        )
    })
    .await?;
    let after = Sample::take(relay.server());
    progress.done();
    relay.check_alive()?;
    for h in &hosts {
        h.client.close();
    }
    pool.wait_idle().await;
    readers.abort_all();
    Ok(JoinReport {
        relay: relay.description.clone(),
        attempted: next.load(Ordering::Relaxed).min(joins),
        completed: total.completed,
        concurrency,
        allocations,
        connect: total.latency(J_CONNECT),
        join: total.latency(J_JOIN),
        total: total.latency(J_TOTAL),
        failures: total.failures,
        kernel_udp: KernelUdp::between(&before, &after),
    })
}
