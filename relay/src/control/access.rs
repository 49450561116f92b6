//! Access: checking a request's credential scope (SPEC section 16) once the driver has
//! verified the credential itself ([`Authorization`]). `authorized` is the one place a
//! credential refusal is sent and reported.
//!
//! Runs wherever the [`ControlPlane`] is called: on the control task.

use baton_protocol::credential::{CredentialRefusal, Scope};
use baton_protocol::{AllocationId, ErrorCode};

use super::{Authorization, ConnId, ControlPlane, Event, Output};

/// Successor links followed when matching an allocation scope (as many as `Rejoin` follows).
const MAX_SUCCESSOR_HOPS: usize = 64;

impl ControlPlane {
    /// Whether a request may go on: yes on an open relay; otherwise its credential must have
    /// been verified and its scope pass `permits`. A refusal is answered `unauthorized` with
    /// the [`CredentialRefusal`] as its value, and reported.
    pub(super) fn authorized(
        &mut self,
        conn: ConnId,
        request_id: u32,
        auth: &Authorization,
        permits: impl FnOnce(&Scope) -> bool,
    ) -> bool {
        let refusal = match auth {
            Authorization::Open => return true,
            Authorization::Verified(claims) if permits(&claims.scope) => return true,
            Authorization::Verified(_) => CredentialRefusal::WrongScope,
            Authorization::Refused(refusal) => *refusal,
        };
        self.refuse(conn, request_id, ErrorCode::Unauthorized, refusal.value());
        self.outputs
            .push_back(Output::Event(Event::CredentialRefused { reason: refusal }));
        false
    }

    /// Whether `auth` carries an allocation scope that covers allocation `id`: the scope names
    /// `id`, the first allocation of its lineage, or an allocation that migrated to it (within
    /// the successor links' lifetime). `true` for any other scope (checked elsewhere).
    pub(super) fn scope_reaches(&self, auth: &Authorization, id: AllocationId) -> bool {
        let Authorization::Verified(claims) = auth else {
            return true;
        };
        let Scope::Allocation(mut a) = claims.scope else {
            return true;
        };
        if self.allocations.get(&id).is_some_and(|x| x.lineage == a) {
            return true;
        }
        for _ in 0..=MAX_SUCCESSOR_HOPS {
            if a == id {
                return true;
            }
            match self.successors.get(&a) {
                Some(next) => a = *next,
                None => return false,
            }
        }
        false
    }
}
