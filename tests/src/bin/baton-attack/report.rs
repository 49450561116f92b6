//! What one attack did ([`Outcome`]), the bounds the games must hold during it
//! ([`Bounds::check`]), and the Markdown table of every outcome.

use std::fmt::Write;

use crate::games::Window;

/// The last finite bound of `baton_lane_delay_seconds`, ms.
fn lane_delay_top_ms() -> f64 {
    baton_relay::metrics::LANE_DELAY_BUCKETS
        .last()
        .map_or(0.0, |s| s * 1000.0)
}

/// Loss bound: game datagram loss stays under this, percent.
pub const MAX_LOSS_PCT: f64 = 1.0;
/// Latency bound: game p99 stays under this multiple of the baseline p99...
pub const P99_FACTOR: f64 = 3.0;
/// ...or under this floor, milliseconds, whichever is larger: a sub-millisecond baseline on
/// loopback would otherwise make 1 ms of scheduling noise on a 2-core machine a failure.
pub const P99_FLOOR_MS: f64 = 5.0;
/// Memory bound: the relay's largest RSS during an attack stays under the baseline's plus
/// this, MiB.
pub const RSS_HEADROOM_MIB: f64 = 64.0;

/// The bounds of one run, from its baseline window.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Game p99 latency limit, ms; `None` when not checked (`--no-latency-bound`).
    pub p99_ms: Option<f64>,
    /// Relay RSS limit, MiB.
    pub rss_mib: f64,
}

impl Bounds {
    /// The bounds that hold against `baseline`.
    pub fn from_baseline(baseline: &Outcome) -> Bounds {
        Bounds {
            p99_ms: Some((baseline.games.p99_ms * P99_FACTOR).max(P99_FLOOR_MS)),
            rss_mib: baseline.rss_mib + RSS_HEADROOM_MIB,
        }
    }

    /// Every bound `o` breaks, in words; empty when it holds them all.
    pub fn check(&self, o: &Outcome) -> Vec<String> {
        let mut failed = Vec::new();
        if o.games.disconnects > 0 {
            failed.push(format!("{} game disconnects", o.games.disconnects));
        }
        if o.games.loss_pct() >= MAX_LOSS_PCT {
            failed.push(format!("loss {:.2} %", o.games.loss_pct()));
        }
        if let Some(limit) = self.p99_ms.filter(|limit| o.games.p99_ms >= *limit) {
            failed.push(format!("p99 {:.1} ms ≥ {limit:.1} ms", o.games.p99_ms));
        }
        if o.games.received == 0 {
            failed.push("the games received nothing".to_owned());
        }
        if o.rss_mib >= self.rss_mib {
            failed.push(format!(
                "RSS {:.0} MiB ≥ {:.0} MiB",
                o.rss_mib, self.rss_mib
            ));
        }
        if o.games.violations > 0 {
            failed.push(format!("{} delivery violations", o.games.violations));
        }
        for check in &o.checks {
            if !check.passed {
                failed.push(check.what.clone());
            }
        }
        failed
    }
}

/// A condition of the attack itself (no join code guessed, the snapshot still carried, ...).
#[derive(Debug, Clone)]
pub struct Check {
    /// What holds (or does not), in words.
    pub what: String,
    /// Whether it held.
    pub passed: bool,
}

/// What an attack reports of itself: its figures, and its own checks.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Figures from the attacker's side, e.g. `not_found 300`.
    pub figures: Vec<(String, u64)>,
    /// Conditions that must hold.
    pub checks: Vec<Check>,
}

impl Findings {
    /// Adds a figure.
    pub fn figure(&mut self, name: impl Into<String>, value: u64) {
        self.figures.push((name.into(), value));
    }

    /// Adds a check.
    pub fn check(&mut self, what: impl Into<String>, passed: bool) {
        self.checks.push(Check {
            what: what.into(),
            passed,
        });
    }
}

/// One measured window: the baseline or an attack.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The attack's name (`baseline` for the window without one).
    pub name: String,
    /// Seconds the window lasted.
    pub secs: f64,
    /// What the games saw.
    pub games: Window,
    /// Relay CPU, percent of one core, over the window.
    pub cpu_pct: f64,
    /// Largest relay RSS sampled during the window, MiB.
    pub rss_mib: f64,
    /// The longest a relay lane made its ready tasks wait during the window, ms, rounded up to
    /// its `baton_lane_delay_seconds` bucket (infinite above the last bound).
    pub lane_delay_ms: Option<f64>,
    /// CPU time the hypervisor stole from this machine during the window, ms summed over CPUs
    /// (`/proc/stat`; 10 ms resolution): stalls it causes are the machine's, not the relay's.
    pub steal_ms: Option<f64>,
    /// The relevant relay counters that changed (name, change).
    pub counters: Vec<(String, f64)>,
    /// The attacker's figures and checks.
    pub checks: Vec<Check>,
    /// The attacker's figures.
    pub figures: Vec<(String, u64)>,
    /// Why the attack itself could not run, if it could not.
    pub error: Option<String>,
    /// Bounds broken (filled in by the caller).
    pub failed: Vec<String>,
}

/// The Markdown report: one row per window, then each attack's figures and counters.
pub fn markdown(outcomes: &[Outcome], bounds: &Bounds, known_failing: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| attack | s | loss % | p50 ms | p99 ms | max ms | disconnects | relay CPU % | relay RSS MiB | lane delay ms | steal ms | result |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let result = if o.name == "baseline" {
            "—".to_owned()
        } else if o.failed.is_empty() {
            "PASS".to_owned()
        } else {
            let known = known_failing.iter().any(|(n, _)| *n == o.name);
            format!(
                "FAIL{}: {}",
                if known { " (known)" } else { "" },
                o.failed.join("; ")
            )
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.3} | {:.2} | {:.2} | {:.1} | {} | {:.0} | {:.0} | {} | {} | {} |",
            o.name,
            o.secs,
            o.games.loss_pct(),
            o.games.p50_ms,
            o.games.p99_ms,
            o.games.max_ms,
            o.games.disconnects,
            o.cpu_pct,
            o.rss_mib,
            match o.lane_delay_ms {
                Some(ms) if ms.is_finite() => format!("≤ {ms}"),
                Some(_) => format!("> {}", lane_delay_top_ms()),
                None => "—".to_owned(),
            },
            o.steal_ms.map_or("—".to_owned(), |ms| format!("{ms:.0}")),
            result
        );
    }
    let latency = match bounds.p99_ms {
        Some(limit) => {
            format!("p99 < max({P99_FACTOR}× baseline p99, {P99_FLOOR_MS} ms) = {limit:.2} ms")
        }
        None => "p99 reported, not bounded (--no-latency-bound)".to_owned(),
    };
    let _ = writeln!(
        out,
        "\nBounds: no game disconnect, loss < {MAX_LOSS_PCT} %, {latency}, relay RSS < baseline + \
         {RSS_HEADROOM_MIB} MiB = {:.0} MiB, no delivery violation, and each attack's own checks.\n",
        bounds.rss_mib
    );
    for o in outcomes.iter().filter(|o| o.name != "baseline") {
        let _ = write!(out, "- **{}**:", o.name);
        if let Some(e) = &o.error {
            let _ = write!(out, " attack error: {e};");
        }
        let figures: Vec<String> = o.figures.iter().map(|(n, v)| format!("{n} {v}")).collect();
        if !figures.is_empty() {
            let _ = write!(out, " attacker: {};", figures.join(", "));
        }
        let counters: Vec<String> = o
            .counters
            .iter()
            .map(|(n, v)| format!("`{n}` {v:+}"))
            .collect();
        if !counters.is_empty() {
            let _ = write!(out, " relay: {};", counters.join(", "));
        }
        for c in &o.checks {
            let _ = write!(out, " {}: {};", c.what, if c.passed { "yes" } else { "NO" });
        }
        let _ = writeln!(out);
    }
    out
}
