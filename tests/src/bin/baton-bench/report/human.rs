//! The human-readable report (without `--json`): [`print_human`] renders every section as
//! tables and lines into one string and prints it on stdout, once, from `main` after the
//! benchmarks ran.

use std::fmt::Write as _;

use super::{
    CaseReport, ChurnReport, IdleReport, JoinReport, Latency, LoadReport, Ratio, Report,
    TrafficReport, LOSS_THRESHOLD_PCT,
};
use crate::probe::KernelUdp;

/// Prints the human-readable report.
pub fn print_human(report: &Report) {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(
        out,
        "baton-bench: {} CPUs, load average {} at start, generator {} threads / {} endpoints",
        m.cpus,
        m.load_average_at_start
            .map_or_else(|| "?".to_owned(), |l| format!("{l:.2}")),
        m.generator_threads,
        m.generator_endpoints
    );
    if let Some(load) = &report.load {
        human_load(&mut out, load);
    }
    if let Some(load) = &report.load_at_half_max {
        let _ = writeln!(
            out,
            "\n-- the same load at half of Baton's loss-free rate --"
        );
        human_load(&mut out, load);
    }
    if let Some(c) = &report.churn {
        human_churn(&mut out, c);
    }
    if let Some(j) = &report.join {
        human_join(&mut out, j);
    }
    if let Some(i) = &report.idle {
        human_idle(&mut out, i);
    }
    if let Some(f) = &report.fleet {
        super::fleet::human(&mut out, f);
    }
    if !report.warnings.is_empty() {
        out.push_str("\nWARNINGS:\n");
        for w in &report.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    if report.errors.is_empty() {
        out.push_str(
            "\ncorrectness: no misdelivered, duplicated or spoofed datagrams, no failed set-ups\n",
        );
    } else {
        out.push_str("\nERRORS:\n");
        for e in &report.errors {
            let _ = writeln!(out, "  - {e}");
        }
    }
    print!("{out}");
}

/// A number with `decimals` decimals, or `-`.
fn opt(v: Option<f64>, decimals: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

/// MiB with one decimal, or `-`.
fn mib(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1} MiB"))
}

/// The load section.
fn human_load(out: &mut String, load: &LoadReport) {
    let _ = writeln!(out, "\n== load: {}", load.relay);
    let _ = writeln!(
        out,
        "{} allocations x {} members = {} clients, set up in {:.1} s; relay RSS {} before, {} connected ({} KiB per client)",
        load.allocations,
        load.members,
        load.clients,
        load.setup_s,
        mib(load.relay_rss_before_mib),
        mib(load.relay_rss_connected_mib),
        opt(load.relay_kib_per_client, 1)
    );
    if let Some(coturn) = &load.coturn {
        let _ = writeln!(out, "coturn: {coturn}");
    }
    for case in &load.cases {
        human_case(out, case);
    }
    if let Some(fm) = &load.find_max {
        let _ = writeln!(
            out,
            "\n-- find-max: {}, {} B payload (highest rate with loss < {LOSS_THRESHOLD_PCT} %)",
            fm.pattern.name(),
            fm.payload_bytes
        );
        for search in std::iter::once(&fm.baton)
            .chain(fm.ceiling.as_ref())
            .chain(fm.coturn.as_ref())
        {
            let _ = writeln!(out, "  {}:", search.target);
            for s in &search.steps {
                let _ = writeln!(
                    out,
                    "    {:>8.1}/s/flow offered {:>7.0}/s delivered {:>7.0}/s loss {:>7.3}% p99 {:>8.1}us | cores: server {} gen {} other {} | drops: relay {} socket {} | {}",
                    s.rate_per_flow,
                    s.offered_per_s,
                    s.delivered_per_s,
                    s.loss_pct,
                    s.p99_us,
                    opt(s.server_cores, 2),
                    opt(s.generator_cores, 2),
                    opt(s.other_cores, 2),
                    s.server_dropped.map_or_else(|| "-".to_owned(), |d| d.to_string()),
                    s.server_socket_drops.map_or_else(|| "-".to_owned(), |d| d.to_string()),
                    if s.pass { "pass" } else { "FAIL" }
                );
            }
            let _ = writeln!(
                out,
                "    max: {} /s per flow = {} deliveries/s ({})",
                opt(search.max_rate_per_flow, 1),
                opt(search.max_delivered_per_s, 0),
                search.stopped
            );
        }
        if let Some(r) = fm.ratio {
            let _ = writeln!(out, "  baton max / udp max = {r:.2}");
        }
        if let Some(r) = fm.coturn_ratio {
            let _ = writeln!(out, "  baton max / coturn max = {r:.2}");
        }
    }
}

/// One case: Baton, the ceiling and coturn side by side, with Baton's ratios to each.
fn human_case(out: &mut String, case: &CaseReport) {
    let b = &case.baton;
    let _ = writeln!(
        out,
        "\n-- {}, {} B payload, {}/s per flow ({} flows), {:.0} s window",
        b.pattern.name(),
        b.payload_bytes,
        b.rate_per_flow,
        b.flows,
        b.window_s
    );
    let r = case.ratio.as_ref();
    let rc = case.coturn_ratio.as_ref();
    if let Some(cost) = b.server_cpu_s_per_100k {
        let _ = write!(
            out,
            "  HEADLINE: relay {cost:.3} CPU-s per 100k datagrams ({} datagrams per CPU-second)",
            opt(b.datagrams_per_server_cpu_s, 0)
        );
        if let Some(x) = r.and_then(|r| r.cpu_per_datagram) {
            let _ = write!(out, ", {x:.2}x the plain UDP forwarder's");
        }
        if let Some(x) = rc.and_then(|r| r.cpu_per_datagram) {
            let _ = write!(out, ", {x:.2}x coturn's");
        }
        out.push('\n');
    }
    // Columns: each target present, then Baton's ratio to each.
    let targets: Vec<&TrafficReport> = std::iter::once(b)
        .chain(case.ceiling.as_ref())
        .chain(case.coturn.as_ref())
        .collect();
    let ratios: Vec<(&str, &Ratio)> = r
        .map(|r| ("baton/udp", r))
        .into_iter()
        .chain(rc.map(|r| ("baton/coturn", r)))
        .collect();
    let mut header = format!("  {:<34}", "");
    for t in &targets {
        let _ = write!(header, "{:>16}", t.target);
    }
    for (name, _) in &ratios {
        let _ = write!(header, "{name:>14}");
    }
    let _ = writeln!(out, "{}", header.trim_end());
    let mut row = |name: &str,
                   f: &dyn Fn(&TrafficReport) -> String,
                   ratio: &dyn Fn(&Ratio) -> Option<f64>| {
        let mut line = format!("  {name:<34}");
        for t in &targets {
            let _ = write!(line, "{:>16}", f(t));
        }
        for (_, r) in &ratios {
            let _ = write!(
                line,
                "{:>14}",
                ratio(r).map_or_else(String::new, |x| opt(Some(x), 2))
            );
        }
        let _ = writeln!(out, "{}", line.trim_end());
    };
    let none = &|_: &Ratio| None;
    row(
        "offered datagrams/s",
        &|t| format!("{:.0}", t.offered_per_s),
        none,
    );
    row(
        "delivered datagrams/s",
        &|t| format!("{:.0}", t.delivered_per_s),
        &|r| Some(r.throughput),
    );
    row(
        "payload MB/s",
        &|t| format!("{:.2}", t.payload_bytes_per_s / 1e6),
        none,
    );
    row("loss %", &|t| format!("{:.3}", t.loss_pct), none);
    row(
        "latency p50 us",
        &|t| format!("{:.1}", t.latency.p50_us),
        &|r| Some(r.latency_p50),
    );
    row(
        "latency p99 us",
        &|t| format!("{:.1}", t.latency.p99_us),
        &|r| Some(r.latency_p99),
    );
    row(
        "latency p99.9 us",
        &|t| format!("{:.1}", t.latency.p999_us),
        none,
    );
    row(
        "latency max us",
        &|t| format!("{:.1}", t.latency.max_us),
        none,
    );
    row("server CPU cores", &|t| opt(t.cpu.server_cores, 3), none);
    row(
        "server CPU-s per 100k datagrams",
        &|t| opt(t.server_cpu_s_per_100k, 4),
        &|r| r.cpu_per_datagram,
    );
    row(
        "datagrams per server CPU-s",
        &|t| opt(t.datagrams_per_server_cpu_s, 0),
        none,
    );
    row(
        "server RSS / peak MiB",
        &|t| {
            format!(
                "{}/{}",
                opt(t.server_rss_mib, 1),
                opt(t.server_peak_rss_mib, 1)
            )
        },
        none,
    );
    row(
        "generator CPU cores",
        &|t| opt(t.cpu.generator_cores, 3),
        none,
    );
    row(
        "other processes, cores",
        &|t| opt(t.cpu.other_cores, 3),
        none,
    );
    row(
        "gen drops/skipped/late",
        &|t| {
            format!(
                "{}/{}/{}",
                t.generator.local_drops, t.generator.skipped, t.generator.late
            )
        },
        none,
    );
    row(
        "misdelivered/dup/src-mismatch",
        &|t| {
            format!(
                "{}/{}/{}",
                t.errors.misdelivered, t.errors.duplicates, t.errors.source_mismatch
            )
        },
        none,
    );
    if let Some(m) = &b.server_metrics {
        let _ = writeln!(
            out,
            "  relay metrics: forwarded {} in the window, dropped {:?}; drop reports to clients {:?}",
            m.forwarded, m.dropped, b.reported_drops
        );
    }
    for t in &targets {
        if let Some(k) = t.kernel_udp.filter(|k| k.rcvbuf_errors > 0) {
            kernel_line(out, &format!("{}: ", t.target), Some(&k));
        }
    }
    for t in &targets {
        let _ = writeln!(out, "  saturated first ({}): {}", t.target, t.saturated);
    }
}

/// One latency histogram's percentiles.
fn latency_line(out: &mut String, name: &str, l: &Latency) {
    let _ = writeln!(
        out,
        "  {:<22} p50 {:>9.1} us  p99 {:>9.1} us  p99.9 {:>9.1} us  max {:>9.1} us  (n={})",
        name, l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
    );
}

/// The churn section.
fn human_churn(out: &mut String, c: &ChurnReport) {
    let _ = writeln!(out, "\n== churn: {}", c.relay);
    let _ = writeln!(
        out,
        "  {} of {} cycles (connect host, create, connect peer, join, peer leaves, host leaves) at concurrency {}, TLS {}, in {:.2} s: {:.1} allocations/s",
        c.completed, c.attempted, c.concurrency, c.tls, c.elapsed_s, c.allocations_per_s
    );
    latency_line(out, "host handshake", &c.host_connect);
    latency_line(out, "create", &c.create);
    latency_line(out, "peer handshake", &c.peer_connect);
    latency_line(out, "join by code", &c.join);
    latency_line(out, "peer left -> host told", &c.leave_notice);
    latency_line(out, "whole cycle", &c.cycle);
    let _ = writeln!(
        out,
        "  relay CPU-s per 1000 cycles {}, relay {} cores, generator {} cores, other {} cores",
        opt(c.relay_cpu_s_per_1000, 3),
        opt(c.cpu.server_cores, 2),
        opt(c.cpu.generator_cores, 2),
        opt(c.cpu.other_cores, 2)
    );
    kernel_line(out, "", c.kernel_udp.as_ref());
    let _ = writeln!(
        out,
        "  relay RSS {} before, {} after; empty again after {} s; failures {:?}",
        mib(c.relay_rss_before_mib),
        mib(c.relay_rss_after_mib),
        opt(c.drained_s, 2),
        c.failures
    );
}

/// The join section.
fn human_join(out: &mut String, j: &JoinReport) {
    let _ = writeln!(out, "\n== join by code: {}", j.relay);
    let _ = writeln!(
        out,
        "  {} of {} joins into {} allocations at concurrency {}; failures {:?}",
        j.completed, j.attempted, j.allocations, j.concurrency, j.failures
    );
    latency_line(out, "handshake", &j.connect);
    latency_line(out, "join (Join->Joined)", &j.join);
    latency_line(out, "handshake + join", &j.total);
    kernel_line(out, "", j.kernel_udp.as_ref());
}

/// Kernel UDP drops, if known.
fn kernel_line(out: &mut String, prefix: &str, k: Option<&KernelUdp>) {
    if let Some(k) = k {
        let _ = writeln!(
            out,
            "  {prefix}kernel UDP receive-buffer overflows: {} machine-wide, {} at the server's socket",
            k.rcvbuf_errors,
            k.server_socket_drops
                .map_or_else(|| "?".to_owned(), |d| d.to_string())
        );
    }
}

/// The idle section.
fn human_idle(out: &mut String, i: &IdleReport) {
    let _ = writeln!(out, "\n== idle clients: {}", i.relay);
    let _ = writeln!(
        out,
        "  {} of {} clients ({} per allocation) connected in {:.1} s ({:.0}/s), held {:.0} s; failures {:?}",
        i.connected, i.clients, i.members, i.connect_s, i.connects_per_s, i.hold_s, i.failures
    );
    let _ = writeln!(
        out,
        "  relay RSS: before {}, peak {}, after all left {} -> {} KiB per client; back within 10 %: {}",
        mib(i.relay_rss_before_mib),
        mib(i.relay_rss_peak_mib),
        mib(i.relay_rss_after_mib),
        opt(i.relay_kib_per_client, 1),
        i.rss_returned_within_10pct
            .map_or("-", |ok| if ok { "yes" } else { "NO" })
    );
    let _ = writeln!(
        out,
        "  relay CPU holding them: {} cores; generator {} KiB per client; relay empty {} s after they left",
        opt(i.relay_idle_cores, 3),
        opt(i.generator_kib_per_client, 1),
        opt(i.drained_s, 2)
    );
    for (n, r) in i.rounds.iter().enumerate() {
        let _ = writeln!(
            out,
            "  round {}: {} clients in {:.1} s, relay RSS peak {}, after {} ({}), empty after {} s, kernel drops at close {} (relay socket {})",
            n + 1,
            r.connected,
            r.connect_s,
            mib(r.relay_rss_peak_mib),
            mib(r.relay_rss_after_mib),
            r.relay_rss_returned_s.map_or_else(
                || "not back within 10 % of the start".to_owned(),
                |s| format!("back within 10 % of the start in {s:.1} s")
            ),
            opt(r.drained_s, 2),
            r.kernel_udp_at_close.map_or_else(|| "-".to_owned(), |k| k.rcvbuf_errors.to_string()),
            r.kernel_udp_at_close
                .and_then(|k| k.server_socket_drops)
                .map_or_else(|| "-".to_owned(), |d| d.to_string())
        );
    }
    for h in &i.heartbeats {
        let _ = writeln!(
            out,
            "  heartbeats, host-loss timeout {} ms (a check every {} ms): {} idle allocations (host + 1 peer) held {:.0} s: relay {} cores; per allocation {:.0} bytes/s, {:.2} datagrams/s; {:.2} heartbeats per host per s; departures {}",
            h.host_loss_timeout_ms,
            h.heartbeat_interval_ms,
            h.allocations,
            h.hold_s,
            opt(h.relay_cores, 3),
            h.bytes_per_allocation_per_s,
            h.datagrams_per_allocation_per_s,
            h.heartbeats_per_host_per_s,
            h.departures
        );
    }
    if let Some(steady) = i.rss_steady_across_rounds {
        let _ = writeln!(
            out,
            "  RSS after the last round within 10 % of after the first (no growth): {}",
            if steady { "yes" } else { "NO" }
        );
    }
}
