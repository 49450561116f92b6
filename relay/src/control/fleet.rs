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

use baton_protocol::{AllocationId, ClientMessage, ErrorCode, JoinCode, ServerMessage};

use super::record::{AdoptError, AllocationRecord};
use super::types::{ConnId, Locate, Location, Output};
use super::{Authorization, ControlPlane};

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
    /// Lookups outstanding: the connection and the request they answer, kept to be served
    /// here if the lookup ends in a takeover.
    locating: HashMap<ConnId, Pending>,
    /// Unix time at an instant, to write code expiries into records as wall-clock times.
    unix_base: Option<(Instant, u64)>,
    /// When the control plane started (unix time 0 in records, until a base is set).
    started: Instant,
    /// The connection whose request is being served again after its lookup ended in a
    /// takeover: it is not looked up a second time (a record that does not lead to what the
    /// request names would otherwise send it round forever).
    replaying: Option<ConnId>,
}

/// A request waiting for its lookup.
#[derive(Debug)]
struct Pending {
    request_id: u32,
    msg: ClientMessage,
    auth: Authorization,
}

impl Fleet {
    /// Unix time at `now`, from the base the driver set (0-based without one).
    fn unix_now(&self, now: Instant) -> u64 {
        match self.unix_base {
            Some((at, unix)) => unix + now.saturating_duration_since(at).as_secs(),
            None => now.saturating_duration_since(self.started).as_secs(),
        }
    }

    pub(super) fn new(started: Instant) -> Fleet {
        Fleet {
            pool: VecDeque::new(),
            claiming: false,
            reachable: true,
            locating: HashMap::new(),
            unix_base: None,
            started,
            replaying: None,
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
    pub(super) fn locate(
        &mut self,
        conn: ConnId,
        (msg, auth): (&ClientMessage, &Authorization),
        what: Locate,
    ) {
        let request_id = msg.request_id();
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        if !fleet.reachable {
            self.refuse(conn, request_id, ErrorCode::DirectoryUnavailable, RETRY_MS);
            return;
        }
        if fleet.replaying == Some(conn) {
            self.refuse(conn, request_id, ErrorCode::NotFound, 0);
            return;
        }
        if fleet.locating.contains_key(&conn) || fleet.locating.len() >= MAX_LOCATING {
            self.refuse(conn, request_id, ErrorCode::RateLimited, RETRY_MS);
            return;
        }
        fleet.locating.insert(
            conn,
            Pending {
                request_id,
                msg: msg.clone(),
                auth: auth.clone(),
            },
        );
        self.outputs.push_back(Output::Locate {
            conn,
            request_id,
            what,
        });
    }

    /// [`Input::Located`]: the answer to an [`Output::Locate`].
    pub(super) fn located(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        location: Location,
    ) {
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        if fleet.locating.get(&conn).map(|p| p.request_id) != Some(request_id) {
            // The connection ended (or this is not the lookup it asked for): nobody to answer.
            return;
        }
        let Some(pending) = fleet.locating.remove(&conn) else {
            return;
        };
        let unix_now = fleet.unix_now(now);
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
            Location::Adopt(record) => match self.adopt(now, unix_now, &record) {
                Ok(_) => self.replay(now, conn, pending),
                // Held here already, or its lineage is: the request is served as if it had
                // found it here.
                Err(AdoptError::Held)
                    if self
                        .allocations
                        .contains_key(&AllocationId(record.allocation))
                        || self.lineages.contains_key(&AllocationId(record.lineage)) =>
                {
                    self.replay(now, conn, pending)
                }
                // A stale record (its code belongs to another allocation here): looking again
                // would find the same record, so the lookup ends here.
                Err(_) => self.refuse(conn, request_id, ErrorCode::NotFound, 0),
            },
        }
    }

    /// Serves a looked-up request again, now that its allocation is held here, without
    /// another lookup.
    fn replay(&mut self, now: Instant, conn: ConnId, pending: Pending) {
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.replaying = Some(conn);
        }
        self.handle_request(now, conn, pending.msg, &pending.auth);
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.replaying = None;
        }
    }

    /// Sets the unix time at `at` (fleet mode writes code expiries into records as unix
    /// times; the control plane reads no clock).
    pub fn set_unix_clock(&mut self, at: Instant, unix: u64) {
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.unix_base = Some((at, unix));
        }
    }

    /// The record to publish after `allocation`'s routing changed, in fleet mode.
    pub(super) fn record_to_publish(&self, allocation: AllocationId) -> Option<AllocationRecord> {
        let fleet = self.fleet.as_ref()?;
        // Handed to another node (or being handed): the record is that node's to write now.
        if self
            .drain
            .as_ref()
            .is_some_and(|d| d.relocations.contains_key(&allocation))
        {
            return None;
        }
        let (at, unix) = fleet.unix_base.unwrap_or((fleet.started, 0));
        self.export(allocation, at, unix)
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
