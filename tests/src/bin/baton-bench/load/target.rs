//! One traffic run against one target (the relay or the UDP forwarder): [`Target::run`]
//! starts the senders, takes readings at the window's edges and turns the counts into a
//! report; [`Target::find_max`] steps the rate up for `--find-max`. Runs on the task driving
//! the load run, with a progress line on stderr while it waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{check, specs, Config};
use crate::probe::{Cpu, KernelUdp, Sample, Server};
use crate::procstat;
use crate::quic::ControlEvents;
use crate::relay::Relay;
use crate::report::{MaxSearch, Progress, Report, RunFigures, ServerMetrics, Step, TrafficReport};
use crate::traffic::{self, Pattern, RunSpec, Shared, Transport};

/// A target ready for traffic: its clients, their receivers, and where to read its counters.
pub(super) struct Target<'a> {
    pub(super) name: &'static str,
    pub(super) shared: Arc<Shared>,
    pub(super) transport: Arc<Transport>,
    pub(super) server: Server,
    pub(super) relay: Option<&'a Relay>,
    pub(super) events: Option<Arc<ControlEvents>>,
    pub(super) sender_tasks: usize,
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

    /// Every pattern × payload of `config`, each checked into `report`, then `--find-max` if
    /// asked for.
    pub(super) async fn run_all(
        &self,
        config: &Config,
        report: &mut Report,
        progress: &mut Progress,
    ) -> anyhow::Result<(Vec<TrafficReport>, Option<MaxSearch>)> {
        let mut runs = Vec::new();
        for spec in specs(config) {
            let r = self.run(&spec, progress).await?;
            check(report, &r);
            runs.push(r);
        }
        let max = if config.find_max {
            Some(
                self.find_max(config, config.patterns[0], config.payloads[0], progress)
                    .await?,
            )
        } else {
            None
        };
        Ok((runs, max))
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
