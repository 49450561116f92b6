//! `paths`: direct host–peer paths (SPEC section 17) in the NAT lab (`baton_tests::natlab`:
//! NAT routers in network namespaces, a `baton-relay` process on the lab's internet and
//! `baton-player` processes behind the NATs). Three figures, each against a reference from the
//! same run:
//!
//! - **establishment**: `--trials` fresh cone ↔ cone games; the time from the peer entering the
//!   game (its `ready` report) to its `path_changed` to `direct`, as the peer and as the host
//!   see it; the reference is the peer's join through the relay (process start to `ready`).
//! - **latency**: one-way datagram latency on the punched path, then (the direct path cut at
//!   the host's router) through the relay, `--latency-span` each, both players at once (the
//!   method of the NAT lab's `cone_nats_datagram_latency_direct_versus_relayed` test).
//! - **mixed NATs**: a host behind a cone NAT and peers behind `--peers` NATs playing for
//!   `--duration`: the share of the game's datagrams the relay did not have to forward,
//!   `1 - forwarded / deliveries` (the relay's `baton_datagrams_forwarded_total` over the window
//!   against the deliveries the players' own stats count in it), which pairs went direct, and
//!   what the NAT matrix expects.
//!
//! Needs root and nftables (`ip netns`, `nft`, `conntrack`); elsewhere it prints why it skips
//! and exits 0 (with `CI=true` it fails instead, as the lab's tests do). Every wait is
//! bounded (`baton_tests::WAIT` per step).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_tests::natlab::{self, Lab, LabPlayer, LabRelay, NatMode, RELAY_IP, SKIP_MESSAGE};
use baton_tests::pathbench::{
    direct_reports, expected_direct, pair_latencies, player_args, tally_until, wait_path,
    Percentiles, Tally,
};
use baton_tests::player::{now_us, Role};
use baton_tests::{procstat, relay_process, WAIT};
use serde::Serialize;

use crate::report::Report;
use crate::Global;

/// Forwarded datagrams, the relay's counter.
const FORWARDED: &str = "baton_datagrams_forwarded_total";
/// How long the mixed run waits for every pair's direct-path attempt to end.
const ATTEMPTS_WAIT: Duration = Duration::from_secs(30);

/// Options of the direct-path benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct PathsArgs {
    /// Fresh cone ↔ cone games timed to their direct path [default: 20; --quick: 3].
    #[arg(long)]
    pub trials: Option<usize>,
    /// Datagrams a second each player sends (the host broadcasts, peers send to the host).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Latency window on each path, direct then relayed [default: 3s; --quick: 1s].
    #[arg(long, value_parser = crate::parse_duration)]
    pub latency_span: Option<Duration>,
    /// Measuring window of the mixed-NAT run [default: 15s; --quick: 3s].
    #[arg(long, value_parser = crate::parse_duration)]
    pub duration: Option<Duration>,
    /// The NATs of the mixed run's peers (cone, symmetric, none); the host is behind a cone NAT.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_mode,
        default_value = "cone,cone,none,symmetric,symmetric"
    )]
    pub peers: Vec<NatMode>,
    /// The player binary [default: baton-player next to this executable].
    #[arg(long, value_name = "PATH")]
    pub player_bin: Option<PathBuf>,
}

/// A NAT mode by name.
fn parse_mode(text: &str) -> Result<NatMode, String> {
    match text.trim() {
        "cone" => Ok(NatMode::Cone),
        "symmetric" => Ok(NatMode::Symmetric),
        "none" | "public" => Ok(NatMode::None),
        other => Err(format!("{other:?}: cone, symmetric or none")),
    }
}

/// A NAT mode's name, as `--peers` takes it.
fn mode_name(mode: NatMode) -> &'static str {
    match mode {
        NatMode::Cone => "cone",
        NatMode::Symmetric => "symmetric",
        NatMode::None => "none",
    }
}

/// The whole `paths` report.
#[derive(Debug, Default, Serialize)]
struct PathsReport {
    /// Where it ran.
    machine: MachineNote,
    /// Time to a direct path.
    #[serde(skip_serializing_if = "Option::is_none")]
    establishment: Option<Establishment>,
    /// Latency direct against relayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency: Option<LatencyFigures>,
    /// Relay traffic saved in a mixed-NAT game.
    #[serde(skip_serializing_if = "Option::is_none")]
    mixed: Option<Mixed>,
}

/// The machine, as the figures need it.
#[derive(Debug, Default, Serialize)]
struct MachineNote {
    /// CPUs available.
    cpus: usize,
    /// The CPU's model name.
    cpu_model: Option<String>,
    /// 1-minute load average at the start.
    load_average_at_start: Option<f64>,
    /// Whether this bench (and so, most likely, the relay and players beside it) is a debug
    /// build.
    debug_build: bool,
}

/// Time to a direct path, µs.
#[derive(Debug, Serialize)]
struct Establishment {
    /// Trials run.
    trials: usize,
    /// Trials whose peer reported no direct path within the wait.
    failed: usize,
    /// Peer's `ready` to its `path_changed: direct`.
    peer: Option<Percentiles>,
    /// Peer's `ready` to the host's `path_changed: direct` for that peer.
    host: Option<Percentiles>,
    /// Reference: the peer's join through the relay, its process start to `ready`.
    join: Option<Percentiles>,
    /// The direct path's RTT the peer reported.
    direct_rtt: Option<Percentiles>,
    /// Every trial's peer-side time, in trial order.
    peer_times_us: Vec<u64>,
}

/// One-way latency on each path, µs.
#[derive(Debug, Serialize)]
struct LatencyFigures {
    /// On the punched path.
    direct: Percentiles,
    /// Through the relay, the direct path cut.
    relayed: Percentiles,
    /// Datagrams the relay forwarded while the direct samples were taken (0 when direct).
    forwarded_while_direct: u64,
    /// And while the relayed ones were.
    forwarded_while_relayed: u64,
}

/// One host–peer pair of the mixed run.
#[derive(Debug, Serialize)]
struct Pair {
    /// The peer's id.
    peer: u16,
    /// Its NAT.
    nat: &'static str,
    /// What the NAT matrix expects.
    expected_direct: bool,
    /// The path the peer last reported to the host (`relayed` if it reported none).
    peer_path: String,
    /// The path the host last reported to the peer.
    host_path: String,
}

/// The mixed-NAT run.
#[derive(Debug, Serialize)]
struct Mixed {
    /// The host's NAT.
    host_nat: &'static str,
    /// Measuring window, seconds.
    window_secs: f64,
    /// Datagrams a second each player sent.
    rate: u32,
    /// Deliveries the players' sends asked for in the window.
    game_deliveries: u64,
    /// Datagrams the relay forwarded in the window.
    relay_forwarded: u64,
    /// `1 - relay_forwarded / game_deliveries`.
    saved: f64,
    /// What the NAT matrix expects: the share of pairs expected direct (every pair carries the
    /// same traffic).
    expected_saved: f64,
    /// The pairs.
    pairs: Vec<Pair>,
    /// The relay's direct-path reports by reason.
    direct_reports: BTreeMap<String, u64>,
    /// Datagrams the players reported missing over the run.
    lost: u64,
}

/// Runs the benchmark, prints its figures; a failed step goes to `report.errors`.
pub async fn run(global: &Global, args: &PathsArgs, report: &mut Report) -> anyhow::Result<()> {
    if let Some(why) = natlab::skip_reason() {
        // As the lab's tests: CI must run it.
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("CI must run the NAT lab, but this machine cannot: {why}");
        }
        println!("paths: {SKIP_MESSAGE}: {why}");
        return Ok(());
    }
    if global.relay.is_some() {
        bail!("paths starts its own relay inside the NAT lab; --relay does not apply");
    }
    let relay_bin = match &global.relay_bin {
        Some(path) => path.clone(),
        None => relay_process::relay_bin_beside_this_exe("baton-bench")?,
    };
    let player_bin = match &args.player_bin {
        Some(path) => path.clone(),
        None => player_beside_this_exe()?,
    };
    let trials = args.trials.unwrap_or(if global.quick { 3 } else { 20 });
    let span = args
        .latency_span
        .unwrap_or(Duration::from_secs(if global.quick { 1 } else { 3 }));
    let duration = args
        .duration
        .unwrap_or(Duration::from_secs(if global.quick { 3 } else { 15 }));
    let bins = Bins {
        relay: &relay_bin,
        player: &player_bin,
        rate: args.rate,
    };
    let mut out = PathsReport {
        machine: MachineNote {
            cpus: procstat::cpus(),
            cpu_model: cpu_model(),
            load_average_at_start: procstat::load_average(),
            debug_build: cfg!(debug_assertions),
        },
        ..PathsReport::default()
    };
    {
        let lab = Lab::start(&[NatMode::Cone, NatMode::Cone]).context("building the lab")?;
        let relay = LabRelay::start(&lab, &relay_bin, RELAY_IP, &[], WAIT).await?;
        eprintln!("paths: {trials} cone ↔ cone games to a direct path");
        match establishment(&lab, &relay, &bins, trials).await {
            Ok(figures) => out.establishment = Some(figures),
            Err(e) => report.errors.push(format!("paths establishment: {e:#}")),
        }
        eprintln!("paths: latency, {span:?} direct then {span:?} relayed");
        match latency(&lab, &relay, &bins, span).await {
            Ok(figures) => out.latency = Some(figures),
            Err(e) => report.errors.push(format!("paths latency: {e:#}")),
        }
        let _ = lab.restore(1);
    }
    eprintln!(
        "paths: mixed NATs, cone host and {} peers, {duration:?} window",
        args.peers.len()
    );
    match mixed(&bins, &args.peers, duration).await {
        Ok(figures) => out.mixed = Some(figures),
        Err(e) => report.errors.push(format!("paths mixed run: {e:#}")),
    }
    if global.json {
        println!(
            "{}",
            serde_json::json!({ "paths": out, "errors": report.errors })
        );
    } else {
        print_human(&out, &report.errors);
    }
    Ok(())
}

/// The binaries and the traffic rate every part uses.
struct Bins<'a> {
    relay: &'a Path,
    player: &'a Path,
    rate: u32,
}

impl Bins<'_> {
    /// Starts a player with direct paths preferred in `site` of `lab`.
    async fn player(
        &self,
        lab: &Lab,
        relay: &LabRelay,
        site: usize,
        role: Role,
    ) -> anyhow::Result<LabPlayer> {
        let args = player_args(relay, role, self.rate, true);
        LabPlayer::start(lab, &lab.site(site).host_ns, self.player, &args, WAIT).await
    }

    /// A host in site `host_site`; it and its join code.
    async fn host(
        &self,
        lab: &Lab,
        relay: &LabRelay,
        host_site: usize,
    ) -> anyhow::Result<(LabPlayer, String)> {
        let host = self
            .player(lab, relay, host_site, Role::Host { snapshot_bytes: 0 })
            .await
            .context("host enters")?;
        let code = host.code().context("the host has no join code")?.to_owned();
        Ok((host, code))
    }
}

/// `baton-player` next to this executable.
fn player_beside_this_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating baton-bench")?;
    let bin = exe
        .parent()
        .context("baton-bench has no parent directory")?
        .join(format!("baton-player{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p baton-tests` or name one \
             with --player-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// The CPU's model name from `/proc/cpuinfo`.
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// `--trials` fresh cone ↔ cone games (host in site 1, peer in site 2, one relay), each timed
/// from the peer's `ready` to the direct path on both sides.
async fn establishment(
    lab: &Lab,
    relay: &LabRelay,
    bins: &Bins<'_>,
    trials: usize,
) -> anyhow::Result<Establishment> {
    let (mut peer_us, mut host_us, mut join_us, mut rtt_us) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failed = 0;
    for trial in 0..trials {
        let (mut host, code) = bins.host(lab, relay, 1).await?;
        let spawned = now_us();
        let mut peer = bins
            .player(lab, relay, 2, Role::Join { code })
            .await
            .context("peer joins")?;
        // The reader hands `ready` over as it comes: this is at most a scheduling delay after
        // its stamp, so the times below are, if anything, a little short.
        let ready = now_us();
        let peer_id = peer.peer().context("peer id")?;
        join_us.push(ready.saturating_sub(spawned));
        let direct = async {
            let (at_peer, rtt) = wait_path(&mut peer, 0, "direct", WAIT).await?;
            let (at_host, _) = wait_path(&mut host, peer_id, "direct", WAIT).await?;
            anyhow::Ok((at_peer, rtt, at_host))
        };
        match direct.await {
            Ok((at_peer, rtt, at_host)) => {
                peer_us.push(at_peer.saturating_sub(ready));
                host_us.push(at_host.saturating_sub(ready));
                rtt_us.push(rtt);
            }
            Err(e) => {
                failed += 1;
                eprintln!("paths: trial {trial}: no direct path: {e:#}");
            }
        }
        peer.close(WAIT).await.context("peer leaves")?;
        host.close(WAIT).await.context("host leaves")?;
    }
    if peer_us.is_empty() {
        bail!("no trial of {trials} reached a direct path");
    }
    let peer_times_us = peer_us.clone();
    Ok(Establishment {
        trials,
        failed,
        peer: Percentiles::of(&mut peer_us),
        host: Percentiles::of(&mut host_us),
        join: Percentiles::of(&mut join_us),
        direct_rtt: Percentiles::of(&mut rtt_us),
        peer_times_us,
    })
}

/// The relay's forwarded-datagram counter.
async fn forwarded(relay: &LabRelay) -> anyhow::Result<u64> {
    Ok(relay.metrics().await?.value(FORWARDED) as u64)
}

/// One cone ↔ cone game: `span` of latencies on the direct path, then the direct path cut at
/// the host's router and `span` more through the relay.
async fn latency(
    lab: &Lab,
    relay: &LabRelay,
    bins: &Bins<'_>,
    span: Duration,
) -> anyhow::Result<LatencyFigures> {
    let (mut host, code) = bins.host(lab, relay, 1).await?;
    let mut peer = bins
        .player(lab, relay, 2, Role::Join { code })
        .await
        .context("peer joins")?;
    let peer_id = peer.peer().context("peer id")?;
    wait_path(&mut peer, 0, "direct", WAIT).await?;
    wait_path(&mut host, peer_id, "direct", WAIT).await?;
    // Datagrams in flight through the relay arrive within a few ticks.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = forwarded(relay).await?;
    let mut direct = pair_latencies(&mut host, &mut peer, span).await?;
    let between = forwarded(relay).await?;
    lab.cut_to(1, lab.site(2).wan_ip)?;
    wait_path(&mut host, peer_id, "relayed", WAIT).await?;
    wait_path(&mut peer, 0, "relayed", WAIT).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relayed_from = forwarded(relay).await?;
    let mut relayed = pair_latencies(&mut host, &mut peer, span).await?;
    let after = forwarded(relay).await?;
    lab.restore(1)?;
    peer.close(WAIT).await.context("peer leaves")?;
    host.close(WAIT).await.context("host leaves")?;
    Ok(LatencyFigures {
        direct: Percentiles::of(&mut direct).context("no direct latency samples")?,
        relayed: Percentiles::of(&mut relayed).context("no relayed latency samples")?,
        forwarded_while_direct: between.saturating_sub(before),
        forwarded_while_relayed: after.saturating_sub(relayed_from),
    })
}

/// A cone host and one peer behind each of `peers`, all preferring direct paths; once every
/// pair's attempt has ended, `duration` of play counted by the players and the relay.
async fn mixed(bins: &Bins<'_>, peers: &[NatMode], duration: Duration) -> anyhow::Result<Mixed> {
    if peers.is_empty() {
        bail!("--peers names no peer");
    }
    let host_mode = NatMode::Cone;
    let modes: Vec<NatMode> = std::iter::once(host_mode)
        .chain(peers.iter().copied())
        .collect();
    let lab = Lab::start(&modes).context("building the lab")?;
    let relay = LabRelay::start(&lab, bins.relay, RELAY_IP, &[], WAIT).await?;
    let (host, code) = bins.host(&lab, &relay, 1).await?;
    let mut players = vec![host];
    let mut ids = Vec::new();
    for site in 2..=modes.len() {
        let peer = bins
            .player(&lab, &relay, site, Role::Join { code: code.clone() })
            .await
            .with_context(|| format!("peer in site {site} joins"))?;
        ids.push(peer.peer().context("peer id")?);
        players.push(peer);
    }
    // Every pair's attempt ends with a report from each side (direct, or relayed and why).
    let wanted = 2 * peers.len() as u64;
    let deadline = Instant::now() + ATTEMPTS_WAIT;
    let mut tallies = vec![Tally::default(); players.len()];
    let started = now_us();
    loop {
        let reports = direct_reports(&relay.metrics().await?);
        if reports.values().sum::<u64>() >= wanted {
            break;
        }
        if Instant::now() >= deadline {
            bail!("only {reports:?} direct-path reports after {ATTEMPTS_WAIT:?}");
        }
        // Read what the players reported meanwhile, so none of them waits on its output.
        let until = now_us() + 200_000;
        drain(&mut players, &mut tallies, started, until).await?;
    }
    // Datagrams in flight through the relay arrive within a few ticks.
    let until = now_us() + 300_000;
    drain(&mut players, &mut tallies, started, until).await?;
    for tally in &mut tallies {
        tally.sent = 0;
        tally.deliveries = 0;
    }
    let before = forwarded(&relay).await?;
    let (from, from_instant) = (now_us(), tokio::time::Instant::now());
    let end = from + u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    // The relay's counter is read as the window closes, while the players' reports of it
    // are still being read.
    let relay_at_end = async {
        tokio::time::sleep_until(from_instant + duration).await;
        let at = now_us();
        forwarded(&relay).await.map(|n| (n, at))
    };
    let (drained, at_end) =
        tokio::join!(drain(&mut players, &mut tallies, from, end), relay_at_end);
    drained?;
    let (after, read_at) = at_end?;
    let window = read_at.saturating_sub(from);
    let by_reason = direct_reports(&relay.metrics().await?);
    let mut pairs = Vec::new();
    for (k, (&id, &nat)) in ids.iter().zip(peers).enumerate() {
        let path_of = |tally: &Tally, other: u16| {
            tally
                .paths
                .get(&other)
                .map_or_else(|| "relayed".to_owned(), |(p, _)| p.clone())
        };
        pairs.push(Pair {
            peer: id,
            nat: mode_name(nat),
            expected_direct: expected_direct(host_mode, nat),
            peer_path: path_of(&tallies[k + 1], 0),
            host_path: path_of(&tallies[0], id),
        });
    }
    let game_deliveries: u64 = tallies.iter().map(|t| t.deliveries).sum();
    let relay_forwarded = after.saturating_sub(before);
    let expected = pairs.iter().filter(|p| p.expected_direct).count();
    let lost = tallies.iter().map(|t| t.lost).sum();
    for player in players {
        player.close(WAIT).await.context("player leaves")?;
    }
    if game_deliveries == 0 {
        bail!("the players counted no datagrams sent in the window");
    }
    Ok(Mixed {
        host_nat: mode_name(host_mode),
        window_secs: window as f64 / 1e6,
        rate: bins.rate,
        game_deliveries,
        relay_forwarded,
        saved: 1.0 - relay_forwarded as f64 / game_deliveries as f64,
        expected_saved: expected as f64 / pairs.len() as f64,
        pairs,
        direct_reports: by_reason,
        lost,
    })
}

/// Reads every player's reports into its tally until one stamped after `until_us` (all
/// players at once), counting stats stamped after `from_us`.
async fn drain(
    players: &mut [LabPlayer],
    tallies: &mut [Tally],
    from_us: u64,
    until_us: u64,
) -> anyhow::Result<()> {
    let left = Duration::from_micros(until_us.saturating_sub(now_us()));
    let results = futures_util::future::join_all(
        players
            .iter_mut()
            .zip(tallies.iter_mut())
            .map(|(player, tally)| tally_until(player, tally, from_us, until_us, left + WAIT)),
    )
    .await;
    results.into_iter().collect()
}

/// A duration in µs as milliseconds with one decimal.
fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// The figures as text.
fn print_human(out: &PathsReport, errors: &[String]) {
    let m = &out.machine;
    println!(
        "Direct paths in the NAT lab; machine: {} CPUs ({}), load average {} at start, {} build",
        m.cpus,
        m.cpu_model.as_deref().unwrap_or("unknown CPU"),
        m.load_average_at_start
            .map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}")),
        if m.debug_build { "debug" } else { "release" },
    );
    if let Some(e) = &out.establishment {
        println!(
            "\nTime to a direct path, cone ↔ cone, {} fresh games ({} without one):",
            e.trials, e.failed
        );
        let line = |name: &str, p: &Option<Percentiles>| {
            if let Some(p) = p {
                println!(
                    "  {name:<38} p50 {:>9}  p99 {:>9}  max {:>9}  ({} samples)",
                    ms(p.p50),
                    ms(p.p99),
                    ms(p.max),
                    p.samples
                );
            }
        };
        line("peer ready → peer's path direct", &e.peer);
        line("peer ready → host's path direct", &e.host);
        line("reference: peer join (start → ready)", &e.join);
        line("direct path RTT (as reported)", &e.direct_rtt);
        let times: Vec<String> = e
            .peer_times_us
            .iter()
            .map(|us| format!("{:.0}", *us as f64 / 1000.0))
            .collect();
        println!("  peer's time per trial (ms): {}", times.join(", "));
        if let (Some(p), Some(j)) = (e.peer, e.join) {
            println!(
                "  direct path / join through the relay: {:.2} at p50",
                p.p50 as f64 / j.p50.max(1) as f64
            );
        }
    }
    if let Some(l) = &out.latency {
        println!("\nOne-way datagram latency, cone ↔ cone, same game:");
        for (name, p) in [("direct", l.direct), ("relayed", l.relayed)] {
            println!(
                "  {name:<8} p50 {:>6} µs  p99 {:>6} µs  ({} samples)",
                p.p50, p.p99, p.samples
            );
        }
        println!(
            "  direct/relayed: {:.2} at p50, {:.2} at p99 (relay forwarded {} datagrams while \
             direct, {} while relayed)",
            l.direct.p50 as f64 / l.relayed.p50.max(1) as f64,
            l.direct.p99 as f64 / l.relayed.p99.max(1) as f64,
            l.forwarded_while_direct,
            l.forwarded_while_relayed
        );
    }
    if let Some(x) = &out.mixed {
        println!(
            "\nMixed NATs: {} host, {} peers, {} datagrams/s each, {:.1} s window:",
            x.host_nat,
            x.pairs.len(),
            x.rate,
            x.window_secs
        );
        for p in &x.pairs {
            println!(
                "  peer {:>2} ({:<9}) peer sees {:<7} host sees {:<7} expected {}",
                p.peer,
                p.nat,
                p.peer_path,
                p.host_path,
                if p.expected_direct {
                    "direct"
                } else {
                    "relayed"
                }
            );
        }
        let off: Vec<String> = x
            .pairs
            .iter()
            .filter(|p| (p.peer_path == "direct" && p.host_path == "direct") != p.expected_direct)
            .map(|p| format!("peer {} ({})", p.peer, p.nat))
            .collect();
        if off.is_empty() {
            println!("  every pair took the path the NAT matrix expects");
        } else {
            println!("  not as the NAT matrix expects: {}", off.join(", "));
        }
        println!(
            "  game deliveries {}, relay forwarded {}: relay traffic saved {:.1}% \
             (NAT matrix expects {:.1}%)",
            x.game_deliveries,
            x.relay_forwarded,
            100.0 * x.saved,
            100.0 * x.expected_saved
        );
        println!(
            "  direct-path reports by reason: {:?}; {} datagrams lost",
            x.direct_reports, x.lost
        );
    }
    for e in errors {
        println!("error: {e}");
    }
}
