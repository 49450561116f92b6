//! The control task: the only owner of the [`ControlPlane`]. It feeds the control plane inputs
//! from connection tasks, admin calls from [`RelayHandle`](super::RelayHandle) and timeouts,
//! then [`apply`]s its outputs: control messages onto connections' queues, closes, routing
//! table updates ([`Tables`]), snapshot deliveries and lifecycle events ([`events`](super::events)).
//!
//! Runs as one task on the caller's runtime (spawned by `Relay::bind`); never awaits a
//! connection, so a slow client cannot stall it.

use std::sync::Arc;
use std::time::Instant;

use baton_protocol::CloseCode;
use tokio::sync::mpsc;
use tracing::warn;

use super::events::{record, EventSink};
use super::handle::AdminCall;
use super::routing::Tables;
use super::{sleep_until_opt, snapshot, Shared};
use crate::control::{ControlPlane, Input, Output};
use crate::hooks::HookSender;

/// Inputs (and, separately, admin calls) the control task handles in one turn before it looks
/// at its timers again, so a flood of inputs cannot hold up bind timeouts, migration deadlines
/// or `/readyz`.
const INPUT_BATCH: usize = 64;

/// Owns the control plane: feeds it inputs, admin calls and timeouts, and carries out its
/// outputs.
pub(super) async fn control_task(
    mut cp: ControlPlane,
    mut inputs: mpsc::Receiver<Input>,
    mut admin: mpsc::Receiver<AdminCall>,
    shared: Arc<Shared>,
    hooks: HookSender,
) {
    let mut events = EventSink::new(hooks, shared.fleet.as_ref().map(|f| f.node_id()));
    let mut tables = Tables::default();
    let mut act = |output| apply(output, &shared, &mut tables, &mut events);
    loop {
        let done = turn(&mut cp, &mut inputs, &mut admin, Instant::now(), &mut act);
        shared.metrics.allocations.set(cp.allocation_count() as i64);
        match done {
            Turn::Closed => break,
            // More may be queued: let the runtime's other tasks run, then take another turn.
            Turn::Busy => tokio::task::yield_now().await,
            // Nothing due or queued: wait for the next deadline, input or admin call. What
            // arrives is handled at once; the next turn looks at the timers first again.
            Turn::Idle => {
                let deadline = cp.poll_timeout().map(tokio::time::Instant::from_std);
                tokio::select! {
                    _ = sleep_until_opt(deadline) => {}
                    input = inputs.recv() => match input {
                        Some(input) => cp.handle(Instant::now(), input),
                        None => break,
                    },
                    call = admin.recv() => match call {
                        Some(call) => call(&mut cp, Instant::now()),
                        None => break,
                    },
                }
                drain(&mut cp, &mut act);
            }
        }
    }
}

/// Carries out every output the control plane has queued, in order.
fn drain(cp: &mut ControlPlane, apply: &mut impl FnMut(Output)) {
    while let Some(output) = cp.poll_output() {
        apply(output);
    }
}

/// What one [`turn`] found.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// It did some work; more may be waiting.
    Busy,
    /// Nothing was due or queued.
    Idle,
    /// The relay is stopping: a channel closed.
    Closed,
}

/// One turn of the control task at `now`, without waiting: due timers first, then at most
/// [`INPUT_BATCH`] admin calls, then at most [`INPUT_BATCH`] inputs; each call's outputs go to `apply`
/// as they come.
fn turn(
    cp: &mut ControlPlane,
    inputs: &mut mpsc::Receiver<Input>,
    admin: &mut mpsc::Receiver<AdminCall>,
    now: Instant,
    apply: &mut impl FnMut(Output),
) -> Turn {
    let mut done = Turn::Idle;
    if cp.poll_timeout().is_some_and(|at| at <= now) {
        cp.handle_timeout(now);
        drain(cp, apply);
        done = Turn::Busy;
    }
    for _ in 0..INPUT_BATCH {
        match admin.try_recv() {
            Ok(call) => {
                call(cp, now);
                drain(cp, apply);
                done = Turn::Busy;
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => return Turn::Closed,
        }
    }
    for _ in 0..INPUT_BATCH {
        match inputs.try_recv() {
            Ok(input) => {
                cp.handle(now, input);
                drain(cp, apply);
                done = Turn::Busy;
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => return Turn::Closed,
        }
    }
    done
}

/// Carries out one output of the control plane.
fn apply(output: Output, shared: &Shared, tables: &mut Tables, events: &mut EventSink) {
    match output {
        Output::Send { conn, msg } => {
            let Some(c) = shared.conns.get(&conn).map(|c| c.clone()) else {
                return;
            };
            match c.control_tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(conn, "control queue full; closing");
                    c.close(CloseCode::ControlBacklog);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        Output::Close { conn, code } => {
            if let Some(c) = shared.conns.get(&conn).map(|c| c.clone()) {
                c.route.store(None);
                c.close(code);
            }
        }
        Output::Bound {
            conn,
            allocation,
            peer,
            host_loss_timeout,
        } => tables.bind(shared, conn, allocation, peer, host_loss_timeout),
        Output::Route {
            allocation,
            members,
            host,
        } => tables.update(shared, allocation, members, host),
        Output::Awaiting { allocation, peers } => tables.awaiting(shared, allocation, &peers),
        Output::DeliverSnapshot { conn, data } => {
            let Some(c) = shared.conns.get(&conn).map(|c| c.conn.clone()) else {
                return;
            };
            snapshot::deliver(conn, c, data);
        }
        Output::Event(event) => {
            record(&event, &shared.metrics);
            if let Some(fleet) = &shared.fleet {
                fleet.event(&event);
            }
            events.publish(event);
        }
        Output::Draining => {
            if let Some(fleet) = &shared.fleet {
                fleet.set_draining();
            }
        }
        Output::Relocate { record } => match &shared.fleet {
            Some(fleet) => fleet.relocate(record),
            None => warn!("relocation asked for without a directory"),
        },
        Output::Publish { record } => match &shared.fleet {
            Some(fleet) => fleet.publish(record),
            None => warn!("record publish asked for without a directory"),
        },
        Output::ClaimCodes { count, len } => match &shared.fleet {
            Some(fleet) => fleet.claim_codes(count, len),
            None => warn!("code claim asked for without a directory"),
        },
        Output::Locate {
            conn,
            request_id,
            what,
        } => match &shared.fleet {
            Some(fleet) => fleet.locate(conn, request_id, what),
            None => warn!(conn, "lookup asked for without a directory"),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::Secrets;
    use crate::RelayConfig;

    #[test]
    fn due_timers_fire_before_a_backlog_of_inputs() {
        let config = RelayConfig::default();
        let t0 = Instant::now();
        let secrets = Secrets {
            hmac_key: [1; 32],
            rng_seed: [2; 32],
        };
        let mut cp = ControlPlane::new(&config, secrets, t0);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 4000));
        cp.handle(t0, Input::Connected { conn: 1, addr });
        // A flood: a thousand inputs queued, and connection 1's bind window long over.
        let backlog = 1000;
        let (tx, mut inputs) = mpsc::channel(backlog);
        for conn in 2..2 + backlog as u64 {
            let rtt = Duration::from_millis(1);
            tx.try_send(Input::Rtt { conn, rtt }).unwrap();
        }
        let (_admin_tx, mut admin) = mpsc::channel(1);
        let now = t0 + config.bind_timeout() + Duration::from_secs(1);

        let mut outputs = Vec::new();
        let done = turn(&mut cp, &mut inputs, &mut admin, now, &mut |o| {
            outputs.push(o)
        });

        assert_eq!(done, Turn::Busy);
        assert!(
            outputs.iter().any(|o| matches!(
                o,
                Output::Close {
                    conn: 1,
                    code: CloseCode::BindTimeout
                }
            )),
            "the bind timeout fired in the first turn: {outputs:?}"
        );
        // Inputs are served in bounded batches: most of the backlog waits for later turns.
        assert!(
            inputs.len() >= backlog - INPUT_BATCH,
            "{} left",
            inputs.len()
        );
    }
}
