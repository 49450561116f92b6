//! Join codes: each allocation's code and its `CodeState`, the `codes` table from code to
//! allocation (`CodeEntry`), drawing a free code, resolving one for `Join`, expiry,
//! revocation, and the tombstones that let a late join hear why a code stopped working.
//!
//! Calls only the timer queue (`schedule`). Runs wherever the [`ControlPlane`] is called: on
//! the control task, with `now` passed in.

use std::time::Instant;

use baton_protocol::{AllocationId, ErrorCode, JoinCode};

use super::timers::Timer;
use super::ControlPlane;

/// Whether an allocation's join code still admits joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CodeState {
    /// Joins by code are accepted.
    Active,
    /// Its time to live ran out.
    Expired,
    /// The host or an operator revoked it.
    Revoked,
}

/// What a join code currently resolves to.
#[derive(Debug, Clone, Copy)]
pub(super) enum CodeEntry {
    /// The code admits joins to this allocation.
    Live(AllocationId),
    /// Kept for a while after expiry, revocation or closing so joins get the precise reason.
    Tombstone { code: ErrorCode, until: Instant },
}

impl ControlPlane {
    /// A join code no live allocation or tombstone holds.
    pub(super) fn fresh_code(&mut self) -> JoinCode {
        // 20^6 codes against at most max_allocations live ones: a free code is found in a
        // few draws; the loop is bounded by growing the length if a space ever fills up.
        let mut len = self.code_len;
        loop {
            let mut found = None;
            for _ in 0..64 {
                let code = JoinCode::random(&mut self.rng, len);
                if !self.codes.contains_key(&code) {
                    found = Some(code);
                    break;
                }
            }
            match found {
                Some(code) => break code,
                None => len = (len + 1).min(baton_protocol::join_code::MAX_LEN),
            }
        }
    }

    /// Whether `code` admits joins to allocation `id` (and not a tombstone, nor another
    /// allocation's).
    pub(super) fn code_is_live_for(&self, code: JoinCode, id: AllocationId) -> bool {
        matches!(self.codes.get(&code), Some(CodeEntry::Live(live)) if *live == id)
    }

    /// The allocation `code` admits a join to at `now`, or why it does not.
    pub(super) fn resolve_code(
        &self,
        now: Instant,
        code: JoinCode,
    ) -> Result<AllocationId, ErrorCode> {
        match self.codes.get(&code).copied() {
            None => Err(ErrorCode::NotFound),
            Some(CodeEntry::Tombstone { code, .. }) => Err(code),
            Some(CodeEntry::Live(id)) => match self.allocations.get(&id) {
                // Expiry timers fire at the deadline; this catches a join at that very instant.
                Some(a) if a.code_expires <= now => Err(ErrorCode::Expired),
                Some(_) => Ok(id),
                None => Err(ErrorCode::NotFound),
            },
        }
    }

    /// Revokes allocation `id`'s code (once); a code already expired keeps its tombstone.
    pub(super) fn revoke(&mut self, now: Instant, id: AllocationId) {
        if let Some(alloc) = self.allocations.get_mut(&id) {
            if alloc.code_state == CodeState::Revoked {
                return;
            }
            alloc.code_state = CodeState::Revoked;
            let code = alloc.code;
            self.cancel(Timer::CodeExpiry(id));
            // Only a code this allocation still holds: once an expired code's tombstone is
            // forgotten, the code may have been drawn again for another allocation.
            if self.code_is_live_for(code, id) {
                self.tombstone(now, code, ErrorCode::Revoked);
            }
        }
    }

    /// Replaces `code`'s entry with a tombstone giving `reason`, forgotten after the
    /// tombstone TTL.
    pub(super) fn tombstone(&mut self, now: Instant, code: JoinCode, reason: ErrorCode) {
        let until = now + self.tombstone_ttl;
        self.codes.insert(
            code,
            CodeEntry::Tombstone {
                code: reason,
                until,
            },
        );
        self.schedule(until, Timer::Tombstone(code));
    }

    /// [`Timer::CodeExpiry`]: an active code past its time to live expires.
    pub(super) fn expire_code(&mut self, now: Instant, id: AllocationId) {
        if let Some(alloc) = self.allocations.get_mut(&id) {
            if alloc.code_state == CodeState::Active && alloc.code_expires <= now {
                alloc.code_state = CodeState::Expired;
                let code = alloc.code;
                self.tombstone(now, code, ErrorCode::Expired);
            }
        }
    }

    /// [`Timer::Tombstone`]: a tombstone past its time is forgotten.
    pub(super) fn forget_tombstone(&mut self, now: Instant, code: JoinCode) {
        if matches!(self.codes.get(&code), Some(CodeEntry::Tombstone { until, .. }) if *until <= now)
        {
            self.codes.remove(&code);
        }
    }
}
