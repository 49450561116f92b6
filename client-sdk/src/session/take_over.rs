//! Host migration as a session sees it, the host take-over included. The host is lost
//! (`HostLost`, [`Shared::host_lost`]); an ordinary member then moves to the new host
//! (`Migrated`, [`Shared::moved_to_new_host`]), while the elected member takes over: on
//! `Promote` ([`Shared::promoted`]), or when a lobby hands it a ticket
//! ([`Session::take_over`](super::Session::take_over)), it sends `MigrateAllocation`
//! ([`Shared::begin_take_over`]); on the `AllocationCreated` reply it waits, bounded, for the
//! snapshot stream ([`Shared::await_snapshot`]) before it becomes host and queues
//! [`Event::HostMigrated`] ([`Shared::took_over`]), so that event comes before the
//! [`Event::PeerRejoined`]s that follow the reply on the wire. A `Refused` reply fails the
//! take-over ([`Shared::take_over_refused`]).
//!
//! Runs on the session's reader task, called from [`Shared::dispatch`]; `begin_take_over`
//! also runs on the application's task, from `Session::take_over`. Calls `shared.rs` (the
//! role, request ids), the writer's queue and [`Shared::emit`]; the snapshot stream itself is
//! received by [`crate::snapshot::receive`].

use baton_protocol::{AllocationId, ClientMessage, ErrorCode, JoinCode, LeaveReason, PeerId};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::dispatch::ReaderIo;
use super::shared::{lock, Shared};
use crate::error::refusal;
use crate::{Error, Event};

/// A `MigrateAllocation` request in flight.
#[derive(Debug)]
pub(crate) struct TakeOver {
    /// Its request id.
    pub(super) request_id: u32,
    /// Callers of [`Session::take_over`](super::Session::take_over) waiting for the outcome.
    pub(super) waiters: Vec<oneshot::Sender<Result<(), Error>>>,
}

impl Shared {
    /// The host was lost: no host until a member takes over.
    pub(super) fn host_lost(
        &self,
        host: PeerId,
        reason: LeaveReason,
        elected: Option<PeerId>,
        events: &mpsc::Sender<Event>,
    ) {
        {
            let mut role = lock(&self.role);
            role.host = None;
            role.last_host = host;
            role.heard_host_lost = true;
        }
        lock(&self.members).remove(&host);
        tracing::info!(%host, %reason, ?elected, "host lost");
        self.emit(
            events,
            Event::HostLost {
                host,
                reason,
                elected,
            },
        );
    }

    /// Another member took over: the connection now belongs to its `allocation`.
    pub(super) fn moved_to_new_host(
        &self,
        allocation: AllocationId,
        host: PeerId,
        events: &mpsc::Sender<Event>,
    ) {
        {
            let mut role = lock(&self.role);
            role.allocation = allocation;
            role.host = Some(host);
            role.last_host = host;
        }
        lock(&self.members).insert(host);
        tracing::info!(%allocation, %host, "moved to the new host");
        self.emit(
            events,
            Event::HostMigrated {
                allocation,
                new_host: host,
                you_are_host: host == self.local_peer,
                snapshot: None,
            },
        );
    }

    /// The relay elected this client: take over at once.
    pub(super) async fn promoted(
        &self,
        allocation: AllocationId,
        ticket: [u8; 16],
        deadline_ms: u32,
        requests: &mpsc::Sender<Bytes>,
    ) {
        tracing::info!(%allocation, deadline_ms, "elected to take over as host");
        if let Err(e) = self
            .begin_take_over(allocation, ticket, requests, None)
            .await
        {
            tracing::warn!(error = %e, "cannot take over as host");
        }
    }

    /// Sends `MigrateAllocation` for `allocation` with `ticket`. A take-over already in flight
    /// (with an older ticket) is superseded; its waiters wait for this one.
    pub(super) async fn begin_take_over(
        &self,
        allocation: AllocationId,
        ticket: [u8; 16],
        requests: &mpsc::Sender<Bytes>,
        waiter: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Result<(), Error> {
        let request_id = self.next_request_id(&mut lock(&self.pending))?;
        {
            let mut role = lock(&self.role);
            let mut waiters = role.take_over.take().map(|t| t.waiters).unwrap_or_default();
            waiters.extend(waiter);
            role.take_over = Some(TakeOver {
                request_id,
                waiters,
            });
            role.awaiting_snapshot = Some(request_id);
        }
        tracing::info!(%allocation, request_id, "taking over as host");
        let message = ClientMessage::MigrateAllocation {
            request_id,
            allocation,
            ticket,
        };
        self.send_request(requests, message).await
    }

    /// The take-over `request_id` answers, removed from the role, if it is the one in flight.
    pub(super) fn finish_take_over(&self, request_id: u32) -> Option<TakeOver> {
        let mut role = lock(&self.role);
        match &role.take_over {
            Some(t) if t.request_id == request_id => role.take_over.take(),
            _ => None,
        }
    }

    /// The relay granted `take_over`: once the snapshot is in (or the wait for it ended), this
    /// client is host of the successor `allocation`.
    pub(super) async fn took_over(
        &self,
        take_over: TakeOver,
        allocation: AllocationId,
        code: JoinCode,
        reconnect_token: [u8; 16],
        io: &mut ReaderIo,
    ) {
        let snapshot = self.await_snapshot(take_over.request_id, io).await;
        {
            let mut role = lock(&self.role);
            role.allocation = allocation;
            role.host = Some(self.local_peer);
            role.last_host = self.local_peer;
            role.join_code = Some(code);
            role.reconnect_token = reconnect_token;
        }
        lock(&self.members).insert(self.local_peer);
        tracing::info!(
            %allocation,
            snapshot_len = snapshot.as_ref().map_or(0, Bytes::len),
            "took over as host"
        );
        self.emit(
            &io.events,
            Event::HostMigrated {
                allocation,
                new_host: self.local_peer,
                you_are_host: true,
                snapshot,
            },
        );
        for tx in take_over.waiters {
            let _ = tx.send(Ok(()));
        }
    }

    /// The relay refused `take_over`.
    pub(super) fn take_over_refused(&self, take_over: TakeOver, code: ErrorCode, value: u32) {
        self.stop_awaiting_snapshot(take_over.request_id);
        tracing::warn!(%code, value, "the relay refused the take-over");
        for tx in take_over.waiters {
            let _ = tx.send(Err(refusal(code, value)));
        }
    }

    /// The snapshot delivered for take-over `request_id` (the relay always sends one, empty if
    /// none is stored), waiting at most the request timeout for it.
    async fn await_snapshot(&self, request_id: u32, io: &mut ReaderIo) -> Option<Bytes> {
        let wait = async {
            while let Some(delivered) = io.snapshots.recv().await {
                if delivered.take_over == Some(request_id) {
                    return delivered.snapshot;
                }
                tracing::debug!("discarding a snapshot from an earlier take-over");
            }
            None
        };
        let result = tokio::time::timeout(io.wait, wait).await;
        self.stop_awaiting_snapshot(request_id);
        match result {
            Ok(snapshot) => snapshot.filter(|s| !s.is_empty()),
            Err(_) => {
                tracing::warn!("no snapshot stream after taking over; going on without one");
                None
            }
        }
    }

    /// Stops expecting the snapshot of take-over `request_id`.
    fn stop_awaiting_snapshot(&self, request_id: u32) {
        let mut role = lock(&self.role);
        if role.awaiting_snapshot == Some(request_id) {
            role.awaiting_snapshot = None;
        }
    }
}
