//! The per-connection service. [`serve_connection`] registers the connection in
//! [`Shared::conns`](super::Shared), tells the control plane, then runs its parts at once with
//! a `biased` select, in priority order: datagrams ([`forward`](super::forward), in a task of
//! their own so that their wake-ups poll nothing else), the control stream
//! ([`control_stream`](super::control_stream)), snapshot uploads
//! ([`snapshot`](super::snapshot)), RTT reports ([`report_rtt`]) and, while the connection hosts
//! its allocation, the host watch ([`watch_host`]). [`DisconnectGuard`] reports the end exactly
//! once, with the reason [`leave_reason`] reads from quinn.
//!
//! Runs inside each connection's task on the endpoint's data-plane lane thread; reaches the
//! control plane only through the `inputs` channel. [`ConnShared::close`] is also called by the
//! control task.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use baton_protocol::{CloseCode, LeaveReason};
use quinn::{ConnectionError, VarInt};
use tokio::sync::{mpsc, Notify};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::control_stream::control_stream;
use super::forward::forward_datagrams;
use super::liveness::{HostLiveness, Verdict};
use super::snapshot::receive_snapshots;
use super::{ConnShared, Shared};
use crate::control::{ConnId, Input};
use crate::defaults;

/// Reports a connection's end to the control plane exactly once, whichever way its task ends
/// (normal return, early error, panic).
struct DisconnectGuard {
    id: ConnId,
    shared: Arc<Shared>,
    reason: LeaveReason,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        self.shared.conns.remove(&self.id);
        self.shared.metrics.connections.dec();
        let input = Input::Disconnected {
            conn: self.id,
            reason: self.reason,
        };
        if let Err(mpsc::error::TrySendError::Full(input)) = self.shared.inputs.try_send(input) {
            let inputs = self.shared.inputs.clone();
            tokio::spawn(async move {
                let _ = inputs.send(input).await;
            });
        }
    }
}

/// Maps how a connection ended to the reason the others are told; `local` is the code the relay
/// closed it with, if it did.
fn leave_reason(err: &ConnectionError, local: Option<CloseCode>) -> LeaveReason {
    match err {
        ConnectionError::TimedOut => LeaveReason::TimedOut,
        ConnectionError::ApplicationClosed(close) => {
            match CloseCode::from_u64(close.error_code.into_inner()) {
                CloseCode::ProtocolViolation => LeaveReason::ProtocolViolation,
                _ => LeaveReason::Closed,
            }
        }
        ConnectionError::LocallyClosed => match local {
            Some(CloseCode::ProtocolViolation) => LeaveReason::ProtocolViolation,
            // A host silent for its host-loss timeout timed out, as for the idle timeout.
            Some(CloseCode::HostUnresponsive) => LeaveReason::TimedOut,
            _ => LeaveReason::Closed,
        },
        _ => LeaveReason::ConnectionLost,
    }
}

/// Serves connection `id` until it ends.
pub(super) async fn serve_connection(id: ConnId, conn: quinn::Connection, shared: &Arc<Shared>) {
    let (control_tx, control_rx) = mpsc::channel(defaults::CONTROL_QUEUE);
    let conn_shared = Arc::new(ConnShared {
        conn: conn.clone(),
        control_tx,
        route: ArcSwapOption::empty(),
        host: AtomicBool::new(false),
        closed_with: AtomicU32::new(0),
        address: AddressWatch::new(id, conn.remote_address()),
        host_watch: HostWatch::default(),
    });
    shared.conns.insert(id, conn_shared.clone());
    shared.metrics.connections.inc();
    shared.metrics.connections_accepted.inc();
    let mut guard = DisconnectGuard {
        id,
        shared: shared.clone(),
        reason: LeaveReason::ConnectionLost,
    };
    if shared
        .inputs
        .send(Input::Connected {
            conn: id,
            addr: conn.remote_address(),
        })
        .await
        .is_err()
    {
        return;
    }
    debug!("connected");

    let control = control_stream(&conn, shared, id, control_rx);
    // Datagrams run in a task of their own (on this lane too), so a datagram's wake-up polls
    // only the datagram loop, not the control stream, snapshots and timers beside it (each
    // poll of those takes the connection's lock). Aborted when this task ends.
    let datagrams = AbortOnDropHandle::new(tokio::spawn({
        let (me, shared) = (conn_shared.clone(), shared.clone());
        async move { forward_datagrams(&me, &shared).await }
    }));
    let snapshots = receive_snapshots(&conn, &conn_shared, shared, id);
    let rtt = report_rtt(&conn_shared, shared, id);
    let host = watch_host(&conn_shared, shared);
    tokio::pin!(control, datagrams, snapshots, rtt, host);
    let err = tokio::select! {
        // Game traffic first, then control messages; snapshots and RTT samples can wait.
        biased;
        ended = &mut datagrams => match ended {
            Ok(err) => err,
            // The loop panicked: let it end this task too, as when it ran inside it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        },
        err = &mut control => err,
        () = &mut snapshots => None,
        () = &mut rtt => None,
        code = &mut host => Some(code),
    };
    if let Some(code) = err {
        conn_shared.close(code);
    }
    let reason = conn.closed().await;
    guard.reason = leave_reason(&reason, conn_shared.closed_with());
    debug!(cause = %reason, reason = %guard.reason, "disconnected");
}

impl ConnShared {
    /// Closes the connection with `code` and its description, and remembers the code, so that
    /// the departure is reported for what it was (a protocol violation is not a clean leave).
    pub(super) fn close(&self, code: CloseCode) {
        let _ = self.closed_with.compare_exchange(
            0,
            code.to_u32().saturating_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.conn.close(
            VarInt::from_u32(code.to_u32()),
            code.description().as_bytes(),
        );
    }

    /// The code the relay closed the connection with first, if it has.
    fn closed_with(&self) -> Option<CloseCode> {
        match self.closed_with.load(Ordering::Relaxed) {
            0 => None,
            code => Some(CloseCode::from_u64(u64::from(code - 1))),
        }
    }
}

/// What a connection's host watch needs: its allocation's host-loss timeout (set when the
/// connection is bound) and a wake-up for when it becomes host (set at the routing update
/// that makes it host). A connection that does not host runs no timer at all.
#[derive(Default)]
pub(super) struct HostWatch {
    timeout_ms: AtomicU32,
    became_host: Notify,
}

impl HostWatch {
    /// The connection's allocation has host-loss timeout `timeout`.
    pub(super) fn set_timeout(&self, timeout: Duration) {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        self.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The connection became its allocation's host (after `ConnShared::host` was set).
    pub(super) fn became_host(&self) {
        // Stores a permit if the watch is not waiting yet, so the wake-up is never lost.
        self.became_host.notify_one();
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.timeout_ms.load(Ordering::Relaxed)))
    }
}

/// Watches the connection while it hosts its allocation: it samples quinn's count of UDP
/// datagrams received on it every sixth of the host-loss timeout, and returns
/// [`CloseCode::HostUnresponsive`] once [`HostLiveness`] says the host is lost (it counts
/// the metric). Sleeps on [`HostWatch::became_host`] otherwise; a member that becomes host
/// starts with a fresh clock.
async fn watch_host(me: &ConnShared, shared: &Shared) -> CloseCode {
    loop {
        me.host_watch.became_host.notified().await;
        let timeout = me.host_watch.timeout();
        if !me.host.load(Ordering::Acquire) || timeout.is_zero() {
            continue;
        }
        let mut tick = tokio::time::interval(HostLiveness::interval_for(timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Samples are timed by the ticks' schedule, not by when this task got to run, so a
        // silence of exactly six intervals is six intervals (the first tick is immediate).
        let start = tick.tick().await.into_std();
        let mut rule = HostLiveness::new(timeout, start, me.conn.stats().udp_rx.datagrams);
        loop {
            let at = tick.tick().await.into_std();
            if !me.host.load(Ordering::Acquire) {
                break;
            }
            let received = me.conn.stats().udp_rx.datagrams;
            if rule.sample(at, received) == Verdict::Lost {
                shared.metrics.host_unresponsive.inc();
                debug!(?timeout, "host unresponsive");
                return CloseCode::HostUnresponsive;
            }
        }
    }
}

/// How often a connection's RTT is reported to the control plane for host election.
const RTT_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Reports the connection's RTT to the control plane now and then, and checks its address
/// (for a client that sends no datagrams; `forward` checks on datagrams).
async fn report_rtt(me: &ConnShared, shared: &Shared, id: ConnId) {
    let mut tick = tokio::time::interval(RTT_REPORT_INTERVAL);
    loop {
        tick.tick().await;
        let input = Input::Rtt {
            conn: id,
            rtt: me.conn.rtt(),
        };
        if shared.inputs.send(input).await.is_err() {
            return;
        }
        me.address.check(&me.conn, shared);
    }
}

/// How often at most a connection's address is checked while datagrams arrive.
pub(super) const ADDRESS_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Notices the client's address changing (QUIC migrates the connection when a NAT rebinds or
/// the client's network changes) and reports it as `Input::AddressChanged`, which tells the
/// client its new observed address. Checked at most every [`ADDRESS_CHECK_INTERVAL`] while
/// datagrams arrive, and with every RTT report otherwise.
pub(super) struct AddressWatch {
    id: ConnId,
    /// The address the control plane last heard of.
    reported: std::sync::Mutex<std::net::SocketAddr>,
}

impl AddressWatch {
    fn new(id: ConnId, addr: std::net::SocketAddr) -> Self {
        AddressWatch {
            id,
            reported: std::sync::Mutex::new(addr),
        }
    }

    /// Reports `conn`'s address if it changed since the last report. A full input queue
    /// leaves the change for the next check.
    pub(super) fn check(&self, conn: &quinn::Connection, shared: &Shared) {
        let now = conn.remote_address();
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *reported == now {
            return;
        }
        let input = Input::AddressChanged {
            conn: self.id,
            addr: now,
        };
        if shared.inputs.try_send(input).is_ok() {
            debug!(from = %*reported, to = %now, "client address changed");
            *reported = now;
        }
    }
}
