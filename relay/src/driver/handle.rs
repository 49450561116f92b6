//! [`RelayHandle`]: how the admin server (and embedding programs) talk to a running relay.
//!
//! A handle is used from any task. Each query is an [`AdminCall`] sent to the control task
//! (the driver's `control_task` module), which runs it against the `ControlPlane` and answers
//! on a oneshot channel; metrics are read directly.

use std::sync::Arc;
use std::time::Instant;

use baton_protocol::{AllocationId, JoinCode, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::control::{AdminError, AllocationInfo, ControlPlane, Promotion, Reservation};
use crate::metrics::Metrics;

/// A boxed admin request, run on the control task against the control plane with `now`.
pub(crate) type AdminCall = Box<dyn FnOnce(&mut ControlPlane, Instant) + Send>;

/// A cheap, cloneable handle to a running relay's control plane and metrics.
#[derive(Clone)]
pub struct RelayHandle {
    pub(crate) admin: mpsc::Sender<AdminCall>,
    pub(crate) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle").finish_non_exhaustive()
    }
}

impl RelayHandle {
    /// Runs `f` on the control task and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ControlPlane, Instant) -> T + Send + 'static,
    ) -> Result<T, AdminError> {
        let (tx, rx) = oneshot::channel();
        let call: AdminCall = Box::new(move |cp, now| {
            let _ = tx.send(f(cp, now));
        });
        self.admin
            .send(call)
            .await
            .map_err(|_| AdminError::Stopped)?;
        rx.await.map_err(|_| AdminError::Stopped)
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Every live allocation, oldest first.
    pub async fn allocations(&self) -> Result<Vec<AllocationInfo>, AdminError> {
        self.call(|cp, now| cp.allocations(now)).await
    }

    /// One allocation, if it exists.
    pub async fn allocation(&self, id: AllocationId) -> Result<Option<AllocationInfo>, AdminError> {
        self.call(move |cp, now| cp.allocation(now, id)).await
    }

    /// Reserves an allocation for a lobby (see [`ControlPlane::reserve_allocation`]).
    pub async fn reserve_allocation(
        &self,
        max_peers: Option<u16>,
    ) -> Result<Reservation, AdminError> {
        self.call(move |cp, now| cp.reserve_allocation(now, max_peers))
            .await?
    }

    /// Revokes an allocation's join code and tells its host.
    pub async fn revoke_code(&self, id: AllocationId) -> Result<JoinCode, AdminError> {
        self.call(move |cp, now| cp.revoke_code(now, id)).await?
    }

    /// Closes an allocation; its members are disconnected with `AllocationClosed`.
    pub async fn close_allocation(&self, id: AllocationId) -> Result<(), AdminError> {
        self.call(move |cp, now| cp.close_by_admin(now, id)).await?
    }

    /// Overrides the election of a migrating allocation's next host (see
    /// [`ControlPlane::elect_host`]), returning the elected member's ticket.
    pub async fn elect_host(
        &self,
        id: AllocationId,
        peer: PeerId,
        promote: bool,
    ) -> Result<Promotion, AdminError> {
        self.call(move |cp, now| cp.elect_host(now, id, peer, promote))
            .await?
    }

    /// Starts draining this fleet node (see [`ControlPlane::drain`]); returns how many
    /// allocations are left to move.
    pub async fn drain(&self) -> Result<usize, AdminError> {
        self.call(|cp, now| cp.drain(now)).await?
    }

    /// Whether this node drains, and how many allocations it still holds.
    pub async fn drain_state(&self) -> Result<(bool, usize), AdminError> {
        self.call(|cp, _| (cp.is_draining(), cp.allocation_count()))
            .await
    }

    /// Live allocations and connections as the control plane counts them.
    pub async fn counts(&self) -> Result<(usize, usize), AdminError> {
        self.call(|cp, _| (cp.allocation_count(), cp.connection_count()))
            .await
    }
}
