//! Data-plane threads ("lanes"): each QUIC endpoint is served by its own single-threaded tokio
//! runtime on its own OS thread.
//!
//! Relaying one datagram wakes three tasks: the receiving connection's driver (decrypt), the
//! connection task that forwards it, and the sending connection's driver (encrypt and send). On a
//! work-stealing runtime each wake-up may cross threads (a futex and a context switch), which a
//! profile of the relay showed as its largest single cost. On a lane, the endpoint driver, every
//! connection driver and every connection task of that endpoint share one thread, so a wake-up
//! is a push onto a local run queue. Only datagrams between connections on different endpoints
//! (`--endpoints` above 1) cross threads.
//!
//! The control plane, the admin server and webhook delivery stay on the caller's runtime.
//!
//! `Relay::bind` starts one [`Lane`] per endpoint and spawns the endpoint's accept loop on it;
//! `Relay::shutdown` stops them. A lane knows nothing of connections or the control plane.
//!
//! A lane runs one task at a time, so a task that runs long (or a burst of tasks queued ahead)
//! delays every datagram on the lane. [`Lane::spawn_probe`] measures this: a timer every
//! [`PROBE_PERIOD`], and how late it fired, exported as `baton_lane_delay_seconds`.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long a stopping lane lets its remaining tasks finish before they are dropped.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// How often a lane's probe timer fires: 100 wake-ups a second, a few microseconds of CPU.
pub(crate) const PROBE_PERIOD: Duration = Duration::from_millis(10);

/// One data-plane thread and its runtime. Dropping the lane stops the thread: tasks still on
/// it are dropped (their connections with them).
pub(crate) struct Lane {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lane {
    /// Starts lane `index` (the number only names the thread).
    pub(crate) fn start(index: usize) -> io::Result<Lane> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("baton-lane-{index}"))
            .spawn(move || {
                // Runs until told to stop or until the `Lane` is dropped (the sender with it).
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(STOP_GRACE);
            })?;
        Ok(Lane {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The lane's runtime, to spawn tasks on.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs a probe on the lane until it stops: a timer every [`PROBE_PERIOD`], and `report`
    /// called with how late it fired, the time the lane made a ready task wait.
    pub(crate) fn spawn_probe(&self, report: impl Fn(Duration) + Send + 'static) {
        self.handle.spawn(async move {
            let mut due = tokio::time::Instant::now() + PROBE_PERIOD;
            loop {
                tokio::time::sleep_until(due).await;
                let now = tokio::time::Instant::now();
                report(now.saturating_duration_since(due));
                due = now + PROBE_PERIOD;
            }
        });
    }

    /// A quinn runtime that runs endpoint and connection drivers on this lane.
    pub(crate) fn quinn_runtime(&self) -> Arc<dyn quinn::Runtime> {
        Arc::new(LaneRuntime {
            handle: self.handle.clone(),
        })
    }

    /// Stops the lane and waits for its thread to end, without blocking the caller's runtime.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The thread is not joined here: a drop may happen inside an async context, which must
        // not block. It ends by itself within STOP_GRACE.
    }
}

impl fmt::Debug for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lane")
            .field(
                "thread",
                &self.thread.as_ref().and_then(|t| t.thread().name()),
            )
            .finish_non_exhaustive()
    }
}

/// quinn's tokio runtime bound to one lane: drivers are spawned on the lane whichever thread
/// creates them, and sockets and timers register with the lane's reactor.
#[derive(Debug)]
struct LaneRuntime {
    handle: Handle,
}

impl quinn::Runtime for LaneRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        let _enter = self.handle.enter();
        quinn::TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.handle.spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let _enter = self.handle.enter();
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        quinn::TokioRuntime.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_lane_thread_and_stop_ends_it() {
        let lane = Lane::start(7).unwrap();
        let name = lane
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("baton-lane-7"));
        let handle = lane.handle().clone();
        lane.stop().await;
        // The runtime is gone: new tasks are cancelled rather than run.
        assert!(handle.spawn(async {}).await.unwrap_err().is_cancelled());
    }

    #[tokio::test]
    async fn the_probe_reports_how_long_a_task_held_the_lane() {
        let lane = Lane::start(1).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        lane.spawn_probe(move |late| {
            let _ = tx.send(late);
        });
        // The probe runs: it reports every period.
        for _ in 0..3 {
            rx.recv().await.unwrap();
        }
        // A task that holds the thread for 60 ms: the next probe is late by 50-60 ms (it was
        // due within 10 ms of the block's start), plus whatever else held up the machine.
        lane.handle()
            .spawn(async { std::thread::sleep(Duration::from_millis(60)) })
            .await
            .unwrap();
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            worst = worst.max(rx.recv().await.unwrap());
            if worst >= Duration::from_millis(20) {
                break;
            }
        }
        assert!(worst >= Duration::from_millis(45), "{worst:?}");
        assert!(worst <= Duration::from_millis(500), "{worst:?}");
        lane.stop().await;
    }

    #[tokio::test]
    async fn quinn_drivers_spawn_on_the_lane() {
        let lane = Lane::start(0).unwrap();
        let runtime = lane.quinn_runtime();
        let (tx, rx) = oneshot::channel();
        runtime.spawn(Box::pin(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        }));
        assert_eq!(rx.await.unwrap().as_deref(), Some("baton-lane-0"));
    }
}
