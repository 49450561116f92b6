//! The arithmetic and the text reading of `instructions`: a round's length, callgrind dumps'
//! totals, `callgrind_annotate` listings, medians and spreads. Pure functions, unit-tested,
//! except [`top_functions`] which runs `callgrind_annotate`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

/// How long `callgrind_annotate` may take on one dump.
const ANNOTATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Whole periods of every flow that send at least `datagrams` datagrams over `flows` flows.
pub fn periods(datagrams: u64, flows: u64) -> u64 {
    datagrams.div_ceil(flows.max(1)).max(1)
}

/// The window in which the senders' schedule (one datagram per flow every `1e9 / rate` whole
/// nanoseconds, as `traffic::start` computes it) holds exactly `periods` datagrams per flow.
pub fn window(periods: u64, rate: f64) -> Duration {
    let period_ns = (1e9 / rate.clamp(0.001, 1e6)) as u64;
    Duration::from_nanos(periods.saturating_mul(period_ns))
}

/// The total instructions of a callgrind dump: its `summary:` line (or `totals:`), `None`
/// while the file is incomplete.
pub fn total_ir(dump: &str) -> Option<u64> {
    let mut totals = None;
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("summary:") {
            return rest.split_whitespace().next()?.parse().ok();
        }
        if let Some(rest) = line.strip_prefix("totals:") {
            totals = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    totals
}

/// The C library's socket and polling calls, whose counts per datagram show how many
/// datagrams shared a wake-up or a packet.
pub const SYSCALLS: [&str; 7] = [
    "recvmmsg",
    "recvmsg",
    "recvfrom",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "epoll_wait",
];

/// How many times a callgrind dump records each of `names` being called (a name matches
/// itself and its versioned forms, `sendmsg@@GLIBC_2.2.5`). Names absent from the dump are
/// left out.
pub fn call_counts(dump: &str, names: &[&str]) -> BTreeMap<String, u64> {
    // Function names are written once in full, `cfn=(12) name`, then as `cfn=(12)`.
    let mut by_id: HashMap<&str, &str> = HashMap::new();
    let mut target: Option<&str> = None;
    let mut counts = BTreeMap::new();
    for line in dump.lines() {
        if let Some(rest) = line
            .strip_prefix("cfn=")
            .or_else(|| line.strip_prefix("fn="))
        {
            let name = match rest.split_once(' ') {
                Some((id, name)) => {
                    by_id.insert(id, name);
                    name
                }
                None => by_id.get(rest).copied().unwrap_or(""),
            };
            target = line.starts_with("cfn=").then_some(name);
        } else if let Some(rest) = line.strip_prefix("calls=") {
            let (Some(name), Some(n)) = (
                target,
                rest.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok()),
            ) else {
                continue;
            };
            let base = name.split('@').next().unwrap_or(name);
            if let Some(wanted) = names.iter().find(|w| **w == base) {
                *counts.entry((*wanted).to_owned()).or_insert(0) += n;
            }
        }
    }
    counts
}

/// Median of `values` (0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// (largest − smallest) ÷ median, percent (0 for fewer than two values).
pub fn spread_pct(values: &[f64]) -> f64 {
    let m = median(values);
    if values.len() < 2 || m == 0.0 {
        return 0.0;
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    100.0 * (max - min) / m.abs()
}

/// One function's cost in a round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCost {
    /// Its name, demangled.
    pub function: String,
    /// Instructions counted in the round.
    pub ir: u64,
    /// Percent of the round's total.
    pub pct: f64,
    /// `ir` per delivered datagram of the round.
    pub ir_per_delivered: f64,
}

/// Baton's top `n` functions in `dump` by self cost and by inclusive cost (runtime and
/// standard-library frames left out of the inclusive list), from `callgrind_annotate`.
pub async fn top_functions(
    dump: &Path,
    n: usize,
    delivered: u64,
) -> anyhow::Result<(Vec<FunctionCost>, Vec<FunctionCost>)> {
    let by_self = annotate(dump, false).await?;
    let inclusive = annotate(dump, true).await?;
    let per = |list: Vec<(String, u64, f64)>, skip_plumbing: bool| {
        list.into_iter()
            .filter(|(name, _, _)| !skip_plumbing || !is_plumbing(name))
            .take(n)
            .map(|(function, ir, pct)| FunctionCost {
                ir_per_delivered: ir as f64 / delivered.max(1) as f64,
                function,
                ir,
                pct,
            })
            .collect()
    };
    Ok((per(by_self, false), per(inclusive, true)))
}

/// Runs `callgrind_annotate` on `dump` (every function listed) and reads its listing.
async fn annotate(dump: &Path, inclusive: bool) -> anyhow::Result<Vec<(String, u64, f64)>> {
    let text =
        std::fs::read_to_string(dump).with_context(|| format!("reading {}", dump.display()))?;
    let mut fixed = dump.as_os_str().to_owned();
    fixed.push(".annotate");
    let fixed = std::path::PathBuf::from(fixed);
    std::fs::write(&fixed, count_open_calls(&text))
        .with_context(|| format!("writing {}", fixed.display()))?;
    let out = tokio::time::timeout(
        ANNOTATE_TIMEOUT,
        tokio::process::Command::new("callgrind_annotate")
            .arg(format!(
                "--inclusive={}",
                if inclusive { "yes" } else { "no" }
            ))
            .args(["--threshold=100", "--auto=no"])
            .arg(&fixed)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("callgrind_annotate took over {ANNOTATE_TIMEOUT:?}"))?
    .context("running callgrind_annotate")?;
    if !out.status.success() {
        bail!(
            "callgrind_annotate failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_annotate(
        &String::from_utf8_lossy(&out.stdout),
        inclusive,
    ))
}

/// `dump` with every `calls=0` line made `calls=1`. A dump taken mid-run records the calls
/// still open when the counters were zeroed (thread start, the runtime's worker loop) with a
/// call count of 0, and `callgrind_annotate` (3.19) then adds their whole inclusive cost to the
/// caller's self cost: `clone` and `start_thread` would top the self list at 99 %.
pub fn count_open_calls(dump: &str) -> String {
    let mut out = String::with_capacity(dump.len() + 64);
    for line in dump.lines() {
        match line.strip_prefix("calls=0 ") {
            Some(rest) => {
                out.push_str("calls=1 ");
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The function lines of a `callgrind_annotate` listing (`1,234 (5.67%)  file:function
/// [object]`), merged by function name (a function inlined from several files is listed once
/// per file: self costs add up, inclusive ones overlap, so the largest is kept), largest first.
pub fn parse_annotate(text: &str, inclusive: bool) -> Vec<(String, u64, f64)> {
    let mut merged: HashMap<String, (u64, f64)> = HashMap::new();
    let mut order = Vec::new();
    for line in text.lines() {
        let Some((ir, pct, rest)) = cost_line(line) else {
            continue;
        };
        if rest == "PROGRAM TOTALS" {
            continue;
        }
        let name = function_name(rest);
        match merged.get_mut(&name) {
            Some(entry) if inclusive => {
                if ir > entry.0 {
                    *entry = (ir, pct);
                }
            }
            Some(entry) => {
                entry.0 += ir;
                entry.1 += pct;
            }
            None => {
                order.push(name.clone());
                merged.insert(name, (ir, pct));
            }
        }
    }
    let mut list: Vec<(String, u64, f64)> = order
        .into_iter()
        .filter_map(|name| merged.get(&name).map(|&(ir, pct)| (name, ir, pct)))
        .collect();
    list.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    list
}

/// `1,234 (5.67%)  rest` → (1234, 5.67, "rest").
fn cost_line(line: &str) -> Option<(u64, f64, &str)> {
    let line = line.trim_start();
    let (count, rest) = line.split_once(' ')?;
    let ir: u64 = count.replace(',', "").parse().ok()?;
    let rest = rest.trim_start().strip_prefix('(')?;
    let (pct, rest) = rest.split_once("%)")?;
    let pct: f64 = pct.trim().parse().ok()?;
    Some((ir, pct, rest.trim()))
}

/// `file:function [object]` → `function`. The file ends at the first single `:` (Rust paths
/// use `::`); the object, when named, is a trailing ` [/path]`.
fn function_name(rest: &str) -> String {
    let rest = match rest.rfind(" [") {
        Some(i) if rest.ends_with(']') => &rest[..i],
        _ => rest,
    };
    let bytes = rest.as_bytes();
    let split = (0..bytes.len()).find(|&i| {
        bytes[i] == b':' && bytes.get(i + 1) != Some(&b':') && (i == 0 || bytes[i - 1] != b':')
    });
    match split {
        Some(i) => rest[i + 1..].to_owned(),
        None => rest.to_owned(),
    }
}

/// Frames that include (nearly) everything a thread does: thread start-up, the async runtime's
/// scheduler and the standard library's closures around them. Left out of the inclusive list,
/// where they would fill the top without saying anything.
fn is_plumbing(name: &str) -> bool {
    const PREFIXES: [&str; 14] = [
        "std::",
        "<std::",
        "core::",
        "<core::",
        "alloc::",
        "<alloc::",
        "tokio::runtime::",
        "<tokio::runtime::",
        "tokio::task::",
        "<tokio::task::",
        "clone",
        "start_thread",
        "main",
        "__libc_start",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || name.starts_with("0x")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
--------------------------------------------------------------------------------
Ir                 
--------------------------------------------------------------------------------
2,080,087 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                  file:function
--------------------------------------------------------------------------------
1,713,006 (82.35%)  ./misc/../sysdeps/unix/sysv/linux/x86_64/clone.S:clone [/usr/lib/x86_64-linux-gnu/libc.so.6]
  795,917 (38.26%)  /root/.cargo/registry/src/tokio-1.54.1/src/runtime/driver.rs:tokio::runtime::driver::Driver::park [/tmp/baton-relay]
  600,000 (28.84%)  /root/quinn-proto/src/connection/mod.rs:quinn_proto::connection::Connection::poll_transmit [/tmp/baton-relay]
  500,000 (24.03%)  /root/quinn-proto/src/lib.rs:quinn_proto::connection::Connection::poll_transmit
   20,000 ( 0.96%)  ???:<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once [/tmp/baton-relay]
   10,000 ( 0.48%)  ???:0x000000000001f2a0 [/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2]
";

    #[test]
    fn reads_listings() {
        let inclusive = parse_annotate(LISTING, true);
        assert_eq!(inclusive[0], ("clone".to_owned(), 1_713_006, 82.35));
        let quinn = "quinn_proto::connection::Connection::poll_transmit";
        // Listed twice (two files): inclusive keeps the larger, self adds them.
        assert_eq!(inclusive[2], (quinn.to_owned(), 600_000, 28.84));
        assert_eq!(inclusive.len(), 5);
        let by_self = parse_annotate(LISTING, false);
        assert_eq!(by_self[1].0, quinn);
        assert_eq!(by_self[1].1, 1_100_000);
        assert!((by_self[1].2 - 52.87).abs() < 1e-9);
        assert_eq!(
            by_self[3].0,
            "<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once"
        );
        let kept: Vec<_> = inclusive
            .iter()
            .filter(|(n, _, _)| !is_plumbing(n))
            .map(|(n, _, _)| n.as_str())
            .collect();
        assert_eq!(kept, [quinn]);
    }

    #[test]
    fn open_calls_get_a_count() {
        let dump =
            "fn=(3188) clone\ncfn=(3190) start_thread\ncalls=0 336 \n100 17413465\ncalls=10 +6 \n";
        assert_eq!(
            count_open_calls(dump),
            "fn=(3188) clone\ncfn=(3190) start_thread\ncalls=1 336 \n100 17413465\ncalls=10 +6 \n"
        );
    }

    #[test]
    fn counts_calls() {
        let dump = "fn=(1) quinn_udp::imp::UdpSocketState::send\n\
                    cfn=(2) sendmsg@@GLIBC_2.2.5\n\
                    calls=7 +3\n\
                    5 100\n\
                    cfn=(3) memcpy\n\
                    calls=4 +1\n\
                    5 10\n\
                    fn=(4) other\n\
                    cfn=(2)\n\
                    calls=3 +3\n\
                    5 40\n\
                    fn=(2)\n\
                    5 9\n";
        let counts = call_counts(dump, &SYSCALLS);
        assert_eq!(counts.len(), 1);
        assert_eq!(counts["sendmsg"], 10);
    }

    #[test]
    fn reads_dump_totals() {
        assert_eq!(
            total_ir("events: Ir\nsummary: 2080087\ntotals: 2081918\n"),
            Some(2_080_087)
        );
        assert_eq!(total_ir("events: Ir\ntotals: 2081918\n"), Some(2_081_918));
        assert_eq!(total_ir("events: Ir\nfn=(1) main\n"), None);
    }

    #[test]
    fn rounds_hold_whole_periods() {
        assert_eq!(periods(12_000, 8), 1_500);
        assert_eq!(periods(12_001, 8), 1_501);
        assert_eq!(periods(0, 8), 1);
        // The senders' period at 30/s is 33,333,333 ns; the window must not reach the next
        // period's first datagram.
        assert_eq!(window(500, 30.0), Duration::from_nanos(500 * 33_333_333));
        assert_eq!(window(100, 40.0), Duration::from_millis(2_500));
    }

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(spread_pct(&[100.0]), 0.0);
        assert!((spread_pct(&[99.0, 100.0, 101.0]) - 2.0).abs() < 1e-9);
    }
}
