//! Measuring direct host–peer paths in the NAT lab ([`crate::natlab`]), for `baton-bench
//! paths`: which NAT pairs are expected to go direct ([`expected_direct`]), waiting for a
//! player's path report ([`wait_path`]), one-way latencies from its stats ([`latencies`]),
//! the game datagrams it sent in a time window ([`Tally`]), and percentiles
//! ([`Percentiles`]).
//!
//! Every lab namespace shares the machine's clock, so the `t_us` stamps of different player
//! processes (and of this process, [`crate::player::now_us`]) compare directly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use baton_protocol::PathReason;
use serde::Serialize;

use crate::natlab::{LabPlayer, LabRelay, NatMode};
use crate::player::payload::HEADER_LEN;
use crate::player::{PlayerArgs, Report, Role};
use crate::relay_process::Metrics;

/// Whether a host behind `host` and a peer behind `peer` should reach each other directly by
/// hole punching, as the lab's NAT matrix has it (README, "Which NATs go direct"): a public
/// host faces anything, two cone NATs face each other; a symmetric NAT's punch comes from a
/// port the other side never saw, which a cone filter (or another symmetric one) drops.
pub fn expected_direct(host: NatMode, peer: NatMode) -> bool {
    match (host, peer) {
        (NatMode::None, _) | (_, NatMode::None) => true,
        (NatMode::Cone, NatMode::Cone) => true,
        (NatMode::Symmetric, _) | (_, NatMode::Symmetric) => false,
    }
}

/// The direct-path reports a relay has counted (`baton_direct_paths_total`, SPEC section
/// 17.4) by reason, leaving out zeros.
pub fn direct_reports(metrics: &Metrics) -> BTreeMap<String, u64> {
    PathReason::ALL
        .iter()
        .filter_map(|reason| {
            let name = format!(
                "baton_direct_paths_total{{outcome=\"{}\",reason=\"{}\"}}",
                reason.outcome().as_str(),
                reason.as_str()
            );
            let count = metrics.value(&name) as u64;
            (count > 0).then(|| (reason.as_str().to_owned(), count))
        })
        .collect()
}

/// The settings of a lab player: `rate` datagrams a second, stats every 100 ms (with their
/// latency samples), direct paths preferred if `direct`.
pub fn player_args(relay: &LabRelay, role: Role, rate: u32, direct: bool) -> PlayerArgs {
    PlayerArgs {
        relay: relay.addr(),
        fingerprint: relay.fingerprint().to_owned(),
        rate,
        keepalive_ms: 2000,
        max_secs: 600,
        game: 1,
        uid: None,
        payload: HEADER_LEN,
        p2p_every: 0,
        stats_ms: 100,
        game_snapshots: false,
        credential: None,
        role,
        fallback_relays: Vec::new(),
        resume_window_ms: 0,
        idle_timeout_ms: 0,
        log: std::env::var("BATON_LAB_PLAYER_LOG").ok(),
        direct,
        netsim: None,
    }
}

/// A report that shows the session broke (a member lost, a disconnect, a misdelivery).
fn broken(report: &Report) -> bool {
    matches!(
        report,
        Report::PeerLeft { .. }
            | Report::HostLost { .. }
            | Report::Disconnected { .. }
            | Report::Violation { .. }
    )
}

/// Waits (at most `within`) for `player` to report that datagrams with `peer` take `path`
/// (`direct` or `relayed`); the report's time (Unix µs) and the path's RTT (µs).
///
/// # Errors
/// If none comes in time, or the session breaks first.
pub async fn wait_path(
    player: &mut LabPlayer,
    peer: u16,
    path: &str,
    within: Duration,
) -> anyhow::Result<(u64, u64)> {
    let mut broke = None;
    let (t_us, report) = player
        .next_matching(within, |report| {
            if broken(report) {
                broke = Some(report.clone());
                return true;
            }
            matches!(report, Report::PathChanged { peer: p, path: now, .. } if *p == peer && now == path)
        })
        .await?;
    if let Some(report) = broke {
        bail!("the session broke: {report:?}");
    }
    match report {
        Report::PathChanged { rtt_us, .. } => Ok((t_us, rtt_us)),
        other => bail!("unexpected report {other:?}"),
    }
}

/// The one-way latencies (µs) `player` reports over the next `span`.
///
/// # Errors
/// If its reports stop or the session breaks.
pub async fn latencies(player: &mut LabPlayer, span: Duration) -> anyhow::Result<Vec<u64>> {
    let end = Instant::now() + span;
    let mut samples = Vec::new();
    let mut broke = None;
    player
        .next_matching(span + crate::WAIT, |report| {
            if let Report::Stats { latency_us, .. } = report {
                samples.extend_from_slice(latency_us);
            }
            if broken(report) {
                broke = Some(report.clone());
                return true;
            }
            Instant::now() >= end
        })
        .await?;
    if let Some(report) = broke {
        bail!("the session broke: {report:?}");
    }
    Ok(samples)
}

/// Both players' one-way latencies over `span`, measured at once, in one list.
///
/// # Errors
/// As [`latencies`].
pub async fn pair_latencies(
    host: &mut LabPlayer,
    peer: &mut LabPlayer,
    span: Duration,
) -> anyhow::Result<Vec<u64>> {
    let (a, b) = tokio::join!(latencies(host, span), latencies(peer, span));
    let mut samples = a?;
    samples.extend(b?);
    Ok(samples)
}

/// What one player reported: the game datagrams it sent in a window, and its latest path to
/// each other member.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally {
    /// Deliveries its sends asked for (a broadcast counts once per other member), from the
    /// stats reports stamped inside the window.
    pub deliveries: u64,
    /// Datagrams the game handed to the SDK in the window.
    pub sent: u64,
    /// Datagrams missing (gap reports) over the whole run.
    pub lost: u64,
    /// Per other member: the latest path it reported and when (Unix µs).
    pub paths: BTreeMap<u16, (String, u64)>,
}

impl Tally {
    /// Counts `report`, stamped `t_us`, for the window `(from_us, to_us]`.
    ///
    /// # Errors
    /// If it shows the session broke.
    pub fn count(
        &mut self,
        t_us: u64,
        report: &Report,
        from_us: u64,
        to_us: u64,
    ) -> anyhow::Result<()> {
        match report {
            Report::Stats {
                sent, deliveries, ..
            } if t_us > from_us && t_us <= to_us => {
                self.sent += sent;
                self.deliveries += deliveries;
            }
            Report::Gap { lost, .. } => self.lost += lost,
            Report::PathChanged { peer, path, .. } => {
                self.paths.insert(*peer, (path.clone(), t_us));
            }
            other if broken(other) => bail!("the session broke: {other:?}"),
            _ => {}
        }
        Ok(())
    }
}

/// Reads `player`'s reports into `tally` until one stamped after `until_us`, counting stats
/// stamped in `(from_us, until_us]`; at most `within` in all.
///
/// # Errors
/// If no report after `until_us` comes in time, its output ends, or the session breaks.
pub async fn tally_until(
    player: &mut LabPlayer,
    tally: &mut Tally,
    from_us: u64,
    until_us: u64,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    // One report an iteration; bounded by the deadline.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (t_us, report) = player.next(left).await?;
        if let Report::Exited { detail } = &report {
            bail!("the player exited: {detail}");
        }
        tally.count(t_us, &report, from_us, until_us)?;
        if t_us > until_us {
            return Ok(());
        }
    }
}

/// The 50th and 99th percentiles and the largest of some samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// How many samples.
    pub samples: usize,
    /// Median (nearest rank below).
    pub p50: u64,
    /// 99th percentile (nearest rank below).
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `samples` (sorted in place); `None` without samples.
    pub fn of(samples: &mut [u64]) -> Option<Percentiles> {
        samples.sort_unstable();
        let last = samples.len().checked_sub(1)?;
        let at = |q: usize| samples[last * q / 100];
        Some(Percentiles {
            samples: samples.len(),
            p50: at(50),
            p99: at(99),
            max: samples[last],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nat_matrix_says_which_pairs_go_direct() {
        use NatMode::{Cone, None, Symmetric};
        assert!(expected_direct(Cone, Cone));
        assert!(expected_direct(Cone, None));
        assert!(expected_direct(Symmetric, None));
        assert!(expected_direct(None, Symmetric));
        assert!(!expected_direct(Cone, Symmetric));
        assert!(!expected_direct(Symmetric, Cone));
        assert!(!expected_direct(Symmetric, Symmetric));
    }

    #[test]
    fn direct_reports_are_read_by_reason() {
        let metrics = Metrics::parse(
            "baton_direct_paths_total{outcome=\"direct\",reason=\"direct\"} 2\n\
             baton_direct_paths_total{outcome=\"relayed\",reason=\"punch_timed_out\"} 4\n\
             baton_direct_paths_total{outcome=\"relayed\",reason=\"direct_lost\"} 0\n",
        );
        let reports = direct_reports(&metrics);
        assert_eq!(
            reports.into_iter().collect::<Vec<_>>(),
            [("direct".to_owned(), 2), ("punch_timed_out".to_owned(), 4)]
        );
    }

    #[test]
    fn percentiles_take_the_nearest_rank_below() {
        assert_eq!(Percentiles::of(&mut []), None);
        let mut samples: Vec<u64> = (1..=200).rev().collect();
        assert_eq!(
            Percentiles::of(&mut samples),
            Some(Percentiles {
                samples: 200,
                p50: 100,
                p99: 198,
                max: 200
            })
        );
        assert_eq!(
            Percentiles::of(&mut [7]),
            Some(Percentiles {
                samples: 1,
                p50: 7,
                p99: 7,
                max: 7
            })
        );
    }

    #[test]
    fn a_tally_counts_stats_inside_its_window_and_the_latest_paths() {
        let stats = |sent, deliveries| Report::Stats {
            sent,
            deliveries,
            received: 0,
            late: 0,
            last_from: Vec::new(),
            relay_drops: Vec::new(),
            dropped_events: 0,
            latency_us: Vec::new(),
            nat: "unknown".to_owned(),
        };
        let mut tally = Tally::default();
        tally.count(100, &stats(5, 25), 100, 300).unwrap();
        tally.count(200, &stats(5, 25), 100, 300).unwrap();
        tally.count(300, &stats(4, 20), 100, 300).unwrap();
        tally.count(301, &stats(5, 25), 100, 300).unwrap();
        let path = |path: &str| Report::PathChanged {
            peer: 3,
            path: path.to_owned(),
            rtt_us: 500,
        };
        tally.count(150, &path("direct"), 100, 300).unwrap();
        tally.count(250, &path("relayed"), 100, 300).unwrap();
        assert_eq!((tally.sent, tally.deliveries), (9, 45));
        assert_eq!(tally.paths[&3], ("relayed".to_owned(), 250));
        let left = Report::PeerLeft {
            peer: 3,
            reason: "closed".to_owned(),
        };
        assert!(tally.count(310, &left, 100, 300).is_err());
    }
}
