//! The control task: the only owner of the [`ControlPlane`]. It feeds the control plane inputs
//! from connection tasks, admin calls from [`RelayHandle`](super::RelayHandle) and timeouts,
//! then [`apply`]s its outputs: control messages onto connections' queues, closes, routing
//! table updates ([`Tables`]), snapshot deliveries and lifecycle events ([`events`](super::events)).
//!
//! Runs as one task on the caller's runtime (spawned by `Relay::bind`); never awaits a
//! connection, so a slow client cannot stall it.

use std::sync::Arc;
use std::time::Instant;

use baton_protocol::{CloseCode, PeerId};
use tokio::sync::mpsc;
use tracing::warn;

use super::connection::close;
use super::events::{record, EventSink};
use super::handle::AdminCall;
use super::routing::Tables;
use super::{sleep_until_opt, snapshot, Shared};
use crate::control::{ControlPlane, Input, Output};
use crate::hooks::HookSender;

/// Owns the control plane: feeds it inputs, admin calls and timeouts, and carries out its
/// outputs.
pub(super) async fn control_task(
    mut cp: ControlPlane,
    mut inputs: mpsc::Receiver<Input>,
    mut admin: mpsc::Receiver<AdminCall>,
    shared: Arc<Shared>,
    hooks: HookSender,
) {
    let mut events = EventSink::new(hooks);
    let mut tables = Tables::default();
    loop {
        let deadline = cp.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            input = inputs.recv() => match input {
                Some(input) => cp.handle(Instant::now(), input),
                None => break,
            },
            call = admin.recv() => match call {
                Some(call) => call(&mut cp, Instant::now()),
                None => break,
            },
            _ = sleep_until_opt(deadline) => cp.handle_timeout(Instant::now()),
        }
        while let Some(output) = cp.poll_output() {
            apply(output, &cp, &shared, &mut tables, &mut events);
        }
        shared.metrics.allocations.set(cp.allocation_count() as i64);
    }
}

/// Carries out one output of the control plane (`cp`, after the call that queued it).
fn apply(
    output: Output,
    cp: &ControlPlane,
    shared: &Shared,
    tables: &mut Tables,
    events: &mut EventSink,
) {
    match output {
        Output::Send { conn, msg } => {
            let Some(c) = shared.conns.get(&conn).map(|c| c.clone()) else {
                return;
            };
            match c.control_tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(conn, "control queue full; closing");
                    close(&c.conn, CloseCode::ControlBacklog);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        Output::Close { conn, code } => {
            if let Some(c) = shared.conns.get(&conn).map(|c| c.clone()) {
                c.route.store(None);
                close(&c.conn, code);
            }
        }
        Output::Bound {
            conn,
            allocation,
            peer,
        } => tables.bind(shared, conn, allocation, peer),
        Output::Route {
            allocation,
            members,
        } => {
            // Who hosts it now: the host's connection is told before the host hears it.
            let host = cp
                .allocation(Instant::now(), allocation)
                .filter(|a| a.host_bound)
                .and_then(|a| a.host)
                .map(PeerId);
            tables.update(shared, allocation, members, host);
        }
        Output::DeliverSnapshot { conn, data } => {
            let Some(c) = shared.conns.get(&conn).map(|c| c.conn.clone()) else {
                return;
            };
            snapshot::deliver(conn, c, data);
        }
        Output::Event(event) => {
            record(&event, &shared.metrics);
            events.publish(event);
        }
    }
}
