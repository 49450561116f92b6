//! `table`: the README's performance table in one command. Runs `load` at its defaults with
//! the plain UDP forwarder and coturn in the same run and `--find-max` on all three, `load`
//! again with all three at half of Baton's loss-free rate (where the latency target is set),
//! then `idle`, `churn` and `join`, each against a fresh relay, and prints the table as Markdown:
//! every Baton figure beside the forwarder's and coturn's from the same run, with the ratios.
//!
//! coturn's column says why it is empty when `turnserver` is not installed (the load report
//! names the reason).

use std::fmt::Write as _;

use crate::churn::{ChurnArgs, JoinArgs};
use crate::idle::IdleArgs;
use crate::load::LoadArgs;
use crate::report::{CaseReport, Latency, MaxSearch, Report, TrafficReport};
use crate::Global;

/// Options of `table`: those of the benchmarks it runs.
#[derive(Debug, Clone, clap::Args)]
pub struct TableArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub churn: ChurnArgs,
    #[command(flatten)]
    pub join: JoinArgs,
    #[command(flatten)]
    pub idle: IdleArgs,
}

/// Runs the benchmarks behind the table into `report`. One failing to run does not stop the
/// others; it is reported.
pub async fn run(global: &Global, args: &TableArgs, report: &mut Report) {
    let mut load = args.load.clone();
    load.compare_coturn();
    load.find_max = true;
    if let Err(e) = crate::load::run(global, &load, report).await {
        report.errors.push(format!("load did not run: {e:#}"));
    }
    let baton_max = report
        .load
        .as_ref()
        .and_then(|l| l.find_max.as_ref())
        .and_then(|m| m.baton.max_rate_per_flow);
    match baton_max {
        Some(rate) => {
            let mut half = args.load.clone();
            half.compare_coturn();
            half.find_max = false;
            half.rate = rate / 2.0;
            let mut sub = Report::default();
            match crate::load::run(global, &half, &mut sub).await {
                Ok(()) => report.load_at_half_max = sub.load,
                Err(e) => report.errors.push(format!(
                    "load at half the loss-free rate did not run: {e:#}"
                )),
            }
            report.errors.append(&mut sub.errors);
            report.warnings.append(&mut sub.warnings);
        }
        None => report
            .errors
            .push("no loss-free rate found: no load at half of it".to_owned()),
    }
    if let Err(e) = crate::idle::run(global, &args.idle, report).await {
        report.errors.push(format!("idle did not run: {e:#}"));
    }
    if let Err(e) = crate::churn::run_churn(global, &args.churn, report).await {
        report.errors.push(format!("churn did not run: {e:#}"));
    }
    if let Err(e) = crate::churn::run_join(global, &args.join, report).await {
        report.errors.push(format!("join did not run: {e:#}"));
    }
}

/// µs of server CPU per delivered datagram (from CPU-s per 100k).
fn cpu_us(t: &TrafficReport) -> Option<f64> {
    t.server_cpu_s_per_100k.map(|s| s * 10.0)
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} µs"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.0}k/s", v / 1000.0))
}

fn latency(l: &Latency) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} ms",
        l.p50_us / 1000.0,
        l.p99_us / 1000.0,
        l.p999_us / 1000.0
    )
}

fn max_of(search: Option<&MaxSearch>) -> Option<f64> {
    search.and_then(|s| s.max_delivered_per_s)
}

/// The table, in Markdown, from a report `run` filled.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(
        out,
        "Machine: {} CPUs, load average {} at start; generator {} threads.\n",
        m.cpus,
        m.load_average_at_start
            .map_or_else(|| "?".to_owned(), |l| format!("{l:.2}")),
        m.generator_threads
    );
    let _ = writeln!(
        out,
        "| what | Baton | plain UDP forwarder | coturn | Baton / forwarder | Baton / coturn |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let load = report.load.as_ref();
    if let Some(case) = load.and_then(|l| l.cases.first()) {
        let CaseReport {
            baton,
            ceiling,
            coturn,
            ..
        } = case;
        let (b, f, c) = (
            cpu_us(baton),
            ceiling.as_ref().and_then(cpu_us),
            coturn.as_ref().and_then(cpu_us),
        );
        let _ = writeln!(
            out,
            "| server CPU per delivered datagram, {} B, {:.0}k deliveries/s | {} | {} | {} | {} | {} |",
            baton.payload_bytes,
            baton.delivered_per_s / 1000.0,
            us(b),
            us(f),
            us(c),
            ratio(b, f),
            ratio(b, c)
        );
        let lat =
            |t: Option<&TrafficReport>| t.map_or_else(|| "–".to_owned(), |t| latency(&t.latency));
        let _ = writeln!(
            out,
            "| latency p50 / p99 / p99.9 at that load | {} | {} | {} | | |",
            latency(&baton.latency),
            lat(ceiling.as_ref()),
            lat(coturn.as_ref())
        );
        let loss = |t: Option<&TrafficReport>| {
            t.map_or_else(|| "–".to_owned(), |t| format!("{:.3} %", t.loss_pct))
        };
        let _ = writeln!(
            out,
            "| loss at that load | {} | {} | {} | | |",
            loss(Some(baton)),
            loss(ceiling.as_ref()),
            loss(coturn.as_ref())
        );
    }
    if let Some(case) = report
        .load_at_half_max
        .as_ref()
        .and_then(|l| l.cases.first())
    {
        let lat =
            |t: Option<&TrafficReport>| t.map_or_else(|| "–".to_owned(), |t| latency(&t.latency));
        let _ = writeln!(
            out,
            "| latency p50 / p99 / p99.9 at half of Baton's loss-free rate ({:.0}k deliveries/s), loss | {}, {:.3} % | {} | {} | | |",
            case.baton.delivered_per_s / 1000.0,
            latency(&case.baton.latency),
            case.baton.loss_pct,
            lat(case.ceiling.as_ref()),
            lat(case.coturn.as_ref())
        );
    }
    if let Some(max) = load.and_then(|l| l.find_max.as_ref()) {
        let (b, f, c) = (
            max_of(Some(&max.baton)),
            max_of(max.ceiling.as_ref()),
            max_of(max.coturn.as_ref()),
        );
        let _ = writeln!(
            out,
            "| loss-free rate (< 0.1 % loss), {} B | {} | {} | {} | {} | {} |",
            max.payload_bytes,
            rate(b),
            rate(f),
            rate(c),
            ratio(b, f),
            ratio(b, c)
        );
    }
    if let Some(idle) = &report.idle {
        let _ = writeln!(
            out,
            "| relay memory per idle client, {} clients | {} | | | | |",
            idle.connected,
            idle.relay_kib_per_client
                .map_or_else(|| "–".to_owned(), |k| format!("{k:.0} KiB"))
        );
    }
    if let Some(churn) = &report.churn {
        let _ = writeln!(
            out,
            "| allocations created, joined and closed per second | {:.0} | | | | |",
            churn.allocations_per_s
        );
    }
    if let Some(join) = &report.join {
        let _ = writeln!(
            out,
            "| join by code p50 / p99 (connected → joined; with the handshake) | {:.2} / {:.2} ms ({:.2} / {:.2} ms) | | | | |",
            join.join.p50_us / 1000.0,
            join.join.p99_us / 1000.0,
            join.total.p50_us / 1000.0,
            join.total.p99_us / 1000.0
        );
    }
    if let Some(why) = load.and_then(|l| l.coturn.as_ref()) {
        let _ = writeln!(out, "\ncoturn: {why}");
    }
    for e in &report.errors {
        let _ = writeln!(out, "\nerror: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::probe::Cpu;
    use crate::report::{FindMaxReport, LoadReport};
    use crate::traffic::Pattern;

    fn search(target: &'static str, max: Option<f64>) -> MaxSearch {
        MaxSearch {
            target,
            steps: Vec::new(),
            max_rate_per_flow: None,
            max_delivered_per_s: max,
            stopped: String::new(),
        }
    }

    /// A load report of 50 allocations × 5 members with no runs, for a test to fill in.
    fn load_report() -> LoadReport {
        LoadReport {
            relay: String::new(),
            allocations: 50,
            members: 5,
            clients: 250,
            setup_s: 0.0,
            relay_rss_before_mib: None,
            relay_rss_connected_mib: None,
            relay_kib_per_client: None,
            coturn: None,
            cases: Vec::new(),
            find_max: None,
        }
    }

    /// A run's report with only what the table reads: rate, loss and latency.
    fn traffic(
        target: &'static str,
        delivered_per_s: f64,
        loss_pct: f64,
        p: [f64; 3],
    ) -> TrafficReport {
        TrafficReport {
            target,
            pattern: Pattern::Game,
            payload_bytes: 100,
            rate_per_flow: 82.0,
            flows: 250,
            window_s: 10.0,
            offered_per_s: delivered_per_s,
            sent: 0,
            expected: 0,
            received: 0,
            delivered_per_s,
            payload_bytes_per_s: 0.0,
            loss_pct,
            latency: Latency {
                samples: 1,
                p50_us: p[0],
                p99_us: p[1],
                p999_us: p[2],
                max_us: p[2],
                mean_us: p[0],
            },
            errors: Default::default(),
            generator: Default::default(),
            server_metrics: None,
            reported_drops: BTreeMap::new(),
            membership_events: 0,
            kernel_udp: None,
            cpu: Cpu {
                wall_s: 10.0,
                cpus: 2,
                server_cpu_s: None,
                server_cores: None,
                server_threads: None,
                generator_cpu_s: None,
                generator_cores: None,
                machine_busy_cores: None,
                other_cores: None,
            },
            server_cpu_s_per_100k: None,
            datagrams_per_server_cpu_s: None,
            server_rss_mib: None,
            server_peak_rss_mib: None,
            saturated: String::new(),
            pass: true,
        }
    }

    #[test]
    fn the_half_max_row_gives_each_target_s_latency_and_baton_s_loss() {
        let load = |coturn: Option<TrafficReport>| LoadReport {
            cases: vec![CaseReport {
                baton: traffic("baton", 36_600.0, 0.0125, [810.0, 4_800.0, 10_140.0]),
                ceiling: Some(traffic(
                    "udp-forwarder",
                    36_600.0,
                    0.0,
                    [280.0, 5_070.0, 11_290.0],
                )),
                ratio: None,
                coturn,
                coturn_ratio: None,
            }],
            ..load_report()
        };
        let with = Report {
            load_at_half_max: Some(load(Some(traffic(
                "coturn",
                36_600.0,
                0.0,
                [310.0, 3_030.0, 7_520.0],
            )))),
            ..Report::default()
        };
        let table = markdown(&with);
        assert!(
            table.contains(
                "| latency p50 / p99 / p99.9 at half of Baton's loss-free rate (37k deliveries/s), loss | 0.81 / 4.80 / 10.14 ms, 0.013 % | 0.28 / 5.07 / 11.29 ms | 0.31 / 3.03 / 7.52 ms | | |"
            ),
            "{table}"
        );
        // Without coturn (not installed) its cell says so, and the row is still there.
        let without = Report {
            load_at_half_max: Some(load(None)),
            ..Report::default()
        };
        let table = markdown(&without);
        assert!(
            table.contains("| 0.81 / 4.80 / 10.14 ms, 0.013 % | 0.28 / 5.07 / 11.29 ms | – | | |"),
            "{table}"
        );
        // No half-max run (no loss-free rate found): no row.
        assert!(!markdown(&Report::default()).contains("at half of Baton's"));
    }

    #[test]
    fn ratios_and_units() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(ratio(Some(3.0), None), "–");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "–");
        assert_eq!(rate(Some(134_000.0)), "134k/s");
        assert_eq!(us(Some(12.34)), "12.3 µs");
    }

    #[test]
    fn the_loss_free_rate_row_has_every_target_and_a_missing_coturn_says_why() {
        let report = Report {
            load: Some(LoadReport {
                coturn: Some("skipped: turnserver not found".to_owned()),
                find_max: Some(FindMaxReport {
                    pattern: Pattern::Game,
                    payload_bytes: 100,
                    baton: search("baton", Some(134_000.0)),
                    ceiling: Some(search("udp-forwarder", Some(247_000.0))),
                    ratio: None,
                    coturn: None,
                    coturn_ratio: None,
                }),
                ..load_report()
            }),
            ..Report::default()
        };
        let table = markdown(&report);
        assert!(
            table.contains(
                "| loss-free rate (< 0.1 % loss), 100 B | 134k/s | 247k/s | – | 0.54× | – |"
            ),
            "{table}"
        );
        assert!(
            table.contains("coturn: skipped: turnserver not found"),
            "{table}"
        );
    }
}
