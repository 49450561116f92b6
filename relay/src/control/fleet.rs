//! Fleet mode: what the control plane needs of the fleet directory, asked for and answered as
//! inputs and outputs, so the state machine stays sans-IO.
//!
//! - **Join codes unique fleet-wide.** New allocations take their code from a pool of codes
//!   the driver has already claimed in the directory ([`Output::ClaimCodes`], answered with
//!   [`Input::CodesClaimed`]; the driver claims the first pool before the relay serves
//!   anyone). The pool is refilled below [`POOL_LOW`] codes, to
//!   [`POOL_TARGET`]; a code waits in it at most [`POOL_MAX_AGE`] (its claim outlives that,
//!   see the driver). With the pool empty, or the directory unreachable
//!   ([`Input::DirectoryHealth`]), creates are refused `directory_unavailable`: an allocation
//!   the directory cannot record could not be found from other nodes.
//! - **Joins through any node.** A `Join` whose code is not held here, or a `Rejoin` whose
//!   allocation is not, is not refused at once: the control plane asks the driver to locate it
//!   ([`Output::Locate`]) and answers when told ([`Input::Located`]): `Redirect` to the node
//!   that holds it, `not_found` (charged as a failed guess, as on a single relay) when no node
//!   does, `directory_unavailable` when the directory cannot say. One lookup per connection
//!   at a time and [`MAX_LOCATING`] in all, so a client cannot make the relay flood its
//!   directory.
//!
//! Without a directory none of this exists (`ControlPlane::fleet` is `None`) and codes are drawn
//! locally, as on a single relay.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use baton_protocol::{ErrorCode, JoinCode, ServerMessage};

use super::types::{ConnId, Locate, Location, Output};
use super::ControlPlane;

/// Pooled codes below which a refill is asked for.
pub const POOL_LOW: usize = 16;
/// Codes a refill brings the pool up to.
pub const POOL_TARGET: usize = 64;
/// Longest a claimed code waits in the pool before it is dropped unused (the driver claims
/// codes for this long plus the code's time to live, so a pooled code is always still ours).
pub const POOL_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// Directory lookups outstanding at once, relay-wide.
pub const MAX_LOCATING: usize = 1024;
/// What a client refused `directory_unavailable` is told to wait, in milliseconds.
pub const RETRY_MS: u32 = 1000;

/// The control plane's fleet state.
#[derive(Debug)]
pub(super) struct Fleet {
    /// Claimed codes, oldest first, with when each was claimed.
    pool: VecDeque<(JoinCode, Instant)>,
    /// A refill was asked for and not yet answered.
    claiming: bool,
    /// Whether the directory answered its last operation.
    reachable: bool,
    /// Lookups outstanding: the connection and the request they answer.
    locating: HashMap<ConnId, u32>,
}

impl Fleet {
    pub(super) fn new() -> Fleet {
        Fleet {
            pool: VecDeque::new(),
            claiming: false,
            reachable: true,
            locating: HashMap::new(),
        }
    }
}

impl ControlPlane {
    /// Asks for a pool refill if fleet mode is on, the pool runs low and none is pending.
    pub(super) fn refill_pool(&mut self) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        if fleet.claiming || fleet.pool.len() >= POOL_LOW {
            return;
        }
        fleet.claiming = true;
        let count = POOL_TARGET - fleet.pool.len();
        self.outputs.push_back(Output::ClaimCodes {
            count,
            len: self.code_len,
        });
    }

    /// A code for a new allocation: drawn locally on a single relay; taken from the pool of
    /// fleet-wide claimed codes in fleet mode, `None` if there is none or the directory is
    /// unreachable.
    pub(super) fn new_code(&mut self, now: Instant) -> Option<JoinCode> {
        let Some(fleet) = self.fleet.as_mut() else {
            return Some(self.fresh_code());
        };
        if !fleet.reachable {
            return None;
        }
        let mut taken = None;
        while let Some((code, claimed)) = fleet.pool.pop_front() {
            // A stale claim, or a code that is (somehow) in use here: skip it.
            if now.saturating_duration_since(claimed) < POOL_MAX_AGE
                && !self.codes.contains_key(&code)
            {
                taken = Some(code);
                break;
            }
        }
        self.refill_pool();
        taken
    }

    /// [`Input::CodesClaimed`]: codes the driver won in the directory.
    pub(super) fn codes_claimed(&mut self, now: Instant, codes: Vec<JoinCode>) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        fleet.claiming = false;
        let room = POOL_TARGET.saturating_sub(fleet.pool.len());
        fleet
            .pool
            .extend(codes.into_iter().take(room).map(|c| (c, now)));
        // Still low (the directory gave fewer than asked): ask again.
        self.refill_pool();
    }

    /// [`Input::DirectoryHealth`]. When the directory comes back, the pool is dropped and
    /// claimed again: a directory that lost its data (a restart without persistence) no
    /// longer holds those claims, and another node could claim the same codes.
    pub(super) fn directory_health(&mut self, reachable: bool) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let back = reachable && !fleet.reachable;
        fleet.reachable = reachable;
        if back {
            fleet.pool.clear();
            self.refill_pool();
        }
    }

    /// Whether fleet mode is on: a `Join` or `Rejoin` for something not held here is looked
    /// up in the directory rather than refused.
    pub(super) fn in_fleet(&self) -> bool {
        self.fleet.is_some()
    }

    /// Asks the driver to locate `what` for `conn`'s request, or refuses it at once when the
    /// directory is known unreachable or too many lookups are outstanding.
    pub(super) fn locate(&mut self, conn: ConnId, request_id: u32, what: Locate) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        if !fleet.reachable {
            self.refuse(conn, request_id, ErrorCode::DirectoryUnavailable, RETRY_MS);
            return;
        }
        if fleet.locating.contains_key(&conn) || fleet.locating.len() >= MAX_LOCATING {
            self.refuse(conn, request_id, ErrorCode::RateLimited, RETRY_MS);
            return;
        }
        fleet.locating.insert(conn, request_id);
        self.outputs.push_back(Output::Locate {
            conn,
            request_id,
            what,
        });
    }

    /// [`Input::Located`]: the answer to an [`Output::Locate`].
    pub(super) fn located(&mut self, conn: ConnId, request_id: u32, location: Location) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        if fleet.locating.get(&conn) != Some(&request_id) {
            // The connection ended (or this is not the lookup it asked for): nobody to answer.
            return;
        }
        fleet.locating.remove(&conn);
        let Some(ip) = self.conns.get(&conn).map(|c| c.addr.ip()) else {
            return;
        };
        // (An outstanding lookup's connection is always unbound: binding forgets the lookup.)
        match location {
            Location::Node {
                address,
                server_name,
            } => self.send(
                conn,
                ServerMessage::Redirect {
                    request_id,
                    address,
                    server_name,
                },
            ),
            Location::Nowhere => {
                self.charge_failed_guess(ip);
                self.refuse(conn, request_id, ErrorCode::NotFound, 0);
            }
            Location::Unavailable => {
                self.refuse(conn, request_id, ErrorCode::DirectoryUnavailable, RETRY_MS);
            }
        }
    }

    /// Forgets `conn`'s outstanding lookup, if any (it disconnected).
    pub(super) fn forget_lookup(&mut self, conn: ConnId) {
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.locating.remove(&conn);
        }
    }

    /// Outstanding lookups, for the invariant checks: each must belong to a known connection.
    pub(super) fn lookups(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.fleet.iter().flat_map(|f| f.locating.keys().copied())
    }

    /// Codes waiting in the pool (0 without a fleet).
    pub fn pooled_codes(&self) -> usize {
        self.fleet.as_ref().map_or(0, |f| f.pool.len())
    }
}
