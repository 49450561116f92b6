//! `baton-attack`: real attacks against a real relay process while real games play on it,
//! and what each attack did to those games.
//!
//! It starts one `baton-relay` child (default limits, an `--auth-secret`), starts
//! [`games::GAMES`] games through the SDK (a host and [`games::PEERS`] peers each, 60 Hz,
//! every datagram timestamped and sequence-checked), measures a window without attack (the
//! baseline), then runs each attack ([`attacks::all`]) for a window of its own, measuring the
//! games' loss, p99 latency and disconnects, the relay's CPU and RSS, and the relevant relay
//! counters. It prints a Markdown table with PASS/FAIL per attack against the bounds in
//! [`report`], and exits non-zero if any bound fails.
//!
//! ```text
//! baton-attack --quick            # a few seconds per attack (CI)
//! baton-attack                    # 15 s per attack
//! baton-attack --only guessing    # attacks whose name contains "guessing"
//! ```

mod attacks;
mod games;
mod relay;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::attacks::{Attack, Ctx};
use crate::games::Games;
use crate::relay::Relay;
use crate::report::{Bounds, Findings, Outcome};

use baton_tests::attack_known::KNOWN_FAILING;
use baton_tests::procstat;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Attacks a Baton relay process while real games play on it")]
struct Args {
    /// The short form: a few seconds per attack.
    #[arg(long)]
    quick: bool,
    /// Seconds per window (baseline and each attack) [default: 3 with --quick, else 15].
    #[arg(long)]
    window_secs: Option<f64>,
    /// Run only the attacks whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// The relay binary [default: `baton-relay` beside this executable].
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Report latency but do not hold the games to the p99 bound: for unoptimised builds,
    /// whose latency says nothing about the relay's (the tests run one). Every other bound
    /// still holds.
    #[arg(long)]
    no_latency_bound: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The attacks run on threads of their own at the lowest scheduling priority: on one
    // machine the attacker's own CPU (client handshakes, thousands of sockets) would otherwise
    // compete with the games and the relay, and the figures would measure this machine's
    // scheduler rather than what the relay does to an attacker that sits elsewhere.
    let attackers = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("attacker")
        .on_thread_start(lowest_priority)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: attackers' runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, attackers.handle().clone())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Moves the calling thread to nice 19 (Linux keeps a nice value per thread), with `renice`
/// on the thread's id from `/proc/thread-self`. Best effort: without it the figures include
/// the attacker's CPU use, which only makes them worse.
fn lowest_priority() {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|link| link.file_name().map(|n| n.to_string_lossy().into_owned()));
    if let Some(tid) = tid {
        let _ = std::process::Command::new("renice")
            .args(["-n", "19", "-p", &tid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Runs everything; whether every bound held.
async fn run(args: Args, attackers: tokio::runtime::Handle) -> anyhow::Result<bool> {
    let window = Duration::from_secs_f64(
        args.window_secs
            .unwrap_or(if args.quick { 3.0 } else { 15.0 })
            .clamp(0.5, 600.0),
    );
    // Pause between attacks, so that what one leaves behind (half-open handshakes, closing
    // connections) mostly drains before the next is measured.
    let settle = if args.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    // 64 hex digits: the relay uses the flag's text as the secret's bytes.
    let mut rng = attacks::Rng::new(u64::from(std::process::id()));
    let secret = (0..4)
        .map(|_| format!("{:016x}", rng.next()))
        .collect::<String>()
        .into_bytes();
    let relay = Relay::start(args.relay_bin.as_deref(), secret).await?;
    eprintln!("relay: {}", relay.description);
    let games = match Games::start(&relay).await {
        Ok(g) => g,
        Err(e) => {
            relay.stop().await;
            return Err(e);
        }
    };
    let ctx = Ctx {
        relay: relay.addr,
        admin: relay.admin,
        cert_pem: relay.cert_pem.clone(),
        fingerprint: relay.fingerprint.clone(),
        secret: relay.secret.clone(),
        games: games.info.clone(),
        quick: args.quick,
        attackers,
    };
    // Let the games settle into their pace before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    games.take_window();
    let baseline = measure(
        &relay,
        &games,
        "baseline",
        &[],
        window,
        |_, until| {
            Box::pin(async move {
                attacks::hold_until(until).await;
                Ok(Findings::default())
            })
        },
        &ctx,
    )
    .await;
    eprintln!(
        "baseline: p99 {:.2} ms, loss {:.3} %",
        baseline.games.p99_ms,
        baseline.games.loss_pct()
    );
    let mut bounds = Bounds::from_baseline(&baseline);
    if args.no_latency_bound {
        bounds.p99_ms = None;
    }
    let mut outcomes = vec![baseline];
    let chosen: Vec<Attack> = attacks::all()
        .into_iter()
        .filter(|a| {
            args.only
                .as_ref()
                .is_none_or(|o| a.name.contains(o.as_str()))
        })
        .collect();
    for attack in chosen {
        tokio::time::sleep(settle).await;
        games.take_window();
        let mut o = measure(
            &relay,
            &games,
            attack.name,
            attack.counters,
            window,
            attack.run,
            &ctx,
        )
        .await;
        o.failed = bounds.check(&o);
        if let Some(e) = &o.error {
            o.failed.push(format!("the attack could not run: {e}"));
        }
        eprintln!(
            "{}: {} (p99 {:.2} ms, loss {:.3} %)",
            o.name,
            if o.failed.is_empty() {
                "PASS".to_owned()
            } else {
                format!("FAIL: {}", o.failed.join("; "))
            },
            o.games.p99_ms,
            o.games.loss_pct()
        );
        outcomes.push(o);
        if relay.sample().is_none() {
            anyhow::bail!("the relay exited during the run");
        }
    }
    let violation = games.first_violation();
    games.stop();
    relay.stop().await;
    println!("{}", report::markdown(&outcomes, &bounds, KNOWN_FAILING));
    if let Some(v) = violation {
        println!("First delivery violation: {v}");
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.failed.is_empty())
        .map(|o| o.name.as_str())
        .collect();
    println!(
        "FAILED: {}",
        if failed.is_empty() {
            "none".to_owned()
        } else {
            failed.join(" | ")
        }
    );
    // Attacks listed in KNOWN_FAILING are reported as failed (above and in the table) but do
    // not fail the run: the exit code says whether anything else broke a bound.
    Ok(failed
        .iter()
        .all(|name| KNOWN_FAILING.iter().any(|(known, _)| known == name)))
}

/// Runs `run` for `window` while sampling the relay; what the games and the relay did.
async fn measure(
    relay: &Relay,
    games: &Games,
    name: &str,
    counters: &[&str],
    window: Duration,
    run: fn(&Ctx, Instant) -> futures_util::future::BoxFuture<'_, anyhow::Result<Findings>>,
    ctx: &Ctx,
) -> Outcome {
    let before = relay.metrics().await.unwrap_or_default();
    let start = Instant::now();
    let cpu_before = relay.sample().map(|s| s.cpu_s);
    let machine_before = procstat::machine();
    let until = start + window;
    let mut rss_kib = relay.sample().map_or(0, |s| s.rss_kib);
    // Every attack ends by itself, bounded; this bound only guards against a hung one.
    // On the attackers' runtime; the sampling below stays on this one.
    let owned = ctx.clone();
    let spawned = ctx.attackers.spawn(async move { run(&owned, until).await });
    let attack = tokio::time::timeout(window * 4 + Duration::from_secs(30), async {
        spawned
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the attack task failed: {e}")))
    });
    tokio::pin!(attack);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let result = loop {
        tokio::select! {
            r = &mut attack => break r,
            _ = tick.tick() => {
                if let Some(s) = relay.sample() {
                    rss_kib = rss_kib.max(s.rss_kib);
                }
            }
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = relay.sample().map(|s| s.cpu_s);
    let machine_after = procstat::machine();
    let games_window = games.take_window();
    let after = relay.metrics().await.unwrap_or_default();
    let (findings, error) = match result {
        Ok(Ok(f)) => (f, None),
        Ok(Err(e)) => (Findings::default(), Some(format!("{e:#}"))),
        Err(_) => (
            Findings::default(),
            Some("the attack did not end in time".to_owned()),
        ),
    };
    Outcome {
        name: name.to_owned(),
        secs,
        games: games_window,
        cpu_pct: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => 100.0 * (a - b) / secs.max(0.001),
            _ => 0.0,
        },
        rss_mib: rss_kib as f64 / 1024.0,
        lane_delay_ms: after
            .histogram_max_since(&before, "baton_lane_delay_seconds")
            .map(|s| s * 1000.0),
        steal_ms: machine_before
            .zip(machine_after)
            .map(|(b, a)| (a.steal_s - b.steal_s) * 1000.0),
        counters: after.changed_since(&before, counters),
        checks: findings.checks,
        figures: findings.figures,
        error,
        failed: Vec::new(),
    }
}
