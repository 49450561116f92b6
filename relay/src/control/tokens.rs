//! Reconnect tokens and migration tickets: HMAC-SHA256 under the relay's secret
//! (`crate::crypto::hmac_sha256`), truncated to 128 bits. No token is stored; a token is
//! checked by computing it again and comparing with `crypto::constant_time_eq`. What a
//! reconnect token is bound to, the peer id's generation, is kept with the lineage
//! (`Allocation::token_generation`); bumping it revokes the token.
//!
//! Pure functions of the secret and their arguments; run wherever the [`ControlPlane`] is
//! called (the control task).

use baton_protocol::{AllocationId, PeerId};

use super::ControlPlane;
use crate::crypto;

impl ControlPlane {
    /// HMAC-SHA256 of `parts` under the relay's secret, truncated to 128 bits.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&crypto::hmac_sha256(&self.secret, parts)[..16]);
        out
    }

    /// The ticket that lets `elected` open the successor of `id` in election `epoch`.
    pub(super) fn ticket(&self, id: AllocationId, elected: PeerId, epoch: u32) -> [u8; 16] {
        self.mac(&[
            b"baton migrate",
            &id.0.to_be_bytes(),
            &elected.0.to_be_bytes(),
            &epoch.to_be_bytes(),
        ])
    }

    /// The token that lets `peer` take its id back in any allocation of `lineage`, bound to
    /// the id's `generation` in the lineage (a kick or a reuse of the id bumps it, so earlier
    /// tokens stop matching) and to the subject of the credential it was issued with (`None`
    /// on an open relay), so a stolen token is useless without that player's credential.
    pub(super) fn reconnect_token(
        &self,
        lineage: AllocationId,
        (peer, generation): (PeerId, u32),
        subject: Option<&str>,
    ) -> [u8; 16] {
        let subject = subject.unwrap_or("").as_bytes();
        // Subjects are at most 64 bytes, so one length byte keeps the encoding unambiguous.
        let len = u8::try_from(subject.len()).unwrap_or(u8::MAX);
        self.mac(&[
            b"baton rejoin",
            &lineage.0.to_be_bytes(),
            &peer.0.to_be_bytes(),
            &generation.to_be_bytes(),
            &[len],
            subject,
        ])
    }
}
