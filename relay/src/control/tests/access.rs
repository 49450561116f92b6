//! Credential scopes (`control/access.rs`) and the subject a member carries: what each scope
//! permits, that a refused credential learns nothing about codes, and that a reconnect token
//! is bound to its subject.

use std::sync::Arc;

use baton_protocol::credential::{Claims, CredentialRefusal, Scope};

use super::*;

fn verified(subject: &str, scope: Scope) -> Authorization {
    Authorization::Verified(Arc::new(Claims {
        expires: u64::MAX,
        subject: subject.into(),
        scope,
    }))
}

impl Harness {
    fn request_as(&mut self, conn: ConnId, msg: ClientMessage, auth: Authorization) -> Vec<Output> {
        self.cp.handle(self.now, Input::Request { conn, msg, auth });
        self.drain()
    }

    /// `conn` connects and creates an allocation as `auth`; returns the outputs.
    fn create_as(&mut self, conn: ConnId, auth: Authorization) -> Vec<Output> {
        self.connect(conn);
        let request_id = self.rid();
        let msg = ClientMessage::CreateAllocation {
            request_id,
            max_peers: 0,
            code_ttl_secs: 0,
            host_loss_timeout_ms: 0,
            credential: None,
        };
        self.request_as(conn, msg, auth)
    }

    /// `conn` connects and joins `code` as `auth`; returns the outputs.
    fn join_as(&mut self, conn: ConnId, code: JoinCode, auth: Authorization) -> Vec<Output> {
        self.connect(conn);
        let request_id = self.rid();
        let msg = ClientMessage::Join {
            request_id,
            code,
            credential: None,
        };
        self.request_as(conn, msg, auth)
    }

    fn rejoin_as(
        &mut self,
        conn: ConnId,
        allocation: AllocationId,
        peer: PeerId,
        reconnect_token: [u8; 16],
        auth: Authorization,
    ) -> Vec<Output> {
        self.connect(conn);
        let request_id = self.rid();
        let msg = ClientMessage::Rejoin {
            request_id,
            allocation,
            peer,
            reconnect_token,
            credential: None,
        };
        self.request_as(conn, msg, auth)
    }
}

fn created(out: &[Output], conn: ConnId) -> (AllocationId, JoinCode, [u8; 16]) {
    replies_to(out, conn)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::AllocationCreated {
                allocation,
                code,
                reconnect_token,
                ..
            } => Some((allocation, code, reconnect_token)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("conn {conn} did not create: {out:?}"))
}

fn joined(out: &[Output], conn: ConnId) -> (PeerId, [u8; 16]) {
    replies_to(out, conn)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::Joined {
                peer,
                reconnect_token,
                ..
            } => Some((peer, reconnect_token)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("conn {conn} did not join: {out:?}"))
}

fn unauthorized(refusal: CredentialRefusal) -> (ErrorCode, u32) {
    (ErrorCode::Unauthorized, refusal.value())
}

fn credential_refusals(out: &[Output]) -> Vec<CredentialRefusal> {
    events(out)
        .into_iter()
        .filter_map(|e| match e {
            Event::CredentialRefused { reason } => Some(reason),
            _ => None,
        })
        .collect()
}

#[test]
fn create_needs_a_create_or_any_scope() {
    let mut h = Harness::new();
    let out = h.create_as(1, Authorization::Refused(CredentialRefusal::Missing));
    assert_eq!(refused(&out, 1), unauthorized(CredentialRefusal::Missing));
    assert_eq!(credential_refusals(&out), [CredentialRefusal::Missing]);
    let code = JoinCode::parse("BCDF78").unwrap();
    let out = h.create_as(2, verified("p", Scope::JoinCode(code)));
    assert_eq!(
        refused(&out, 2),
        unauthorized(CredentialRefusal::WrongScope)
    );
    assert_eq!(h.cp.allocation_count(), 0);
    created(&h.create_as(3, verified("p", Scope::Create)), 3);
    created(&h.create_as(4, verified("p", Scope::Any)), 4);
    assert_eq!(h.cp.allocation_count(), 2);
}

#[test]
fn a_refused_credential_learns_nothing_about_codes_and_counts_as_a_failed_join() {
    let mut h = Harness::new();
    let (_, live) = h.create();
    let absent = JoinCode::parse("GHJK99").unwrap();
    for code in [live, absent] {
        let out = h.join_as(
            10,
            code,
            Authorization::Refused(CredentialRefusal::BadSignature),
        );
        assert_eq!(
            refused(&out, 10),
            unauthorized(CredentialRefusal::BadSignature)
        );
        // A code scope for another code is refused before the lookup too.
        let other = JoinCode::parse("MNPQ77").unwrap();
        let out = h.join_as(10, code, verified("p", Scope::JoinCode(other)));
        assert_eq!(
            refused(&out, 10),
            unauthorized(CredentialRefusal::WrongScope)
        );
    }
    // Four refusals from one address: they cost failed joins, so guessing stays bounded.
    let mut limited = false;
    for _ in 0..20 {
        let out = h.join_as(
            10,
            absent,
            Authorization::Refused(CredentialRefusal::Expired),
        );
        if refused(&out, 10).0 == ErrorCode::RateLimited {
            limited = true;
            break;
        }
    }
    assert!(limited, "refused credentials are charged as failed joins");
}

#[test]
fn join_scopes_permit_their_code_or_allocation_only() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    let (other_id, _) = h.create_with(50, 0, 0);
    joined(
        &h.join_as(2, code, verified("by-code", Scope::JoinCode(code))),
        2,
    );
    joined(
        &h.join_as(3, code, verified("by-alloc", Scope::Allocation(id))),
        3,
    );
    joined(&h.join_as(4, code, verified("any", Scope::Any)), 4);
    let out = h.join_as(5, code, verified("elsewhere", Scope::Allocation(other_id)));
    assert_eq!(
        refused(&out, 5),
        unauthorized(CredentialRefusal::WrongScope)
    );
    let out = h.join_as(6, code, verified("host-only", Scope::Create));
    assert_eq!(
        refused(&out, 6),
        unauthorized(CredentialRefusal::WrongScope)
    );
    // The subject is the member's, in events and the admin view.
    let info = h.cp.allocation(h.now, id).expect("live");
    let subjects: Vec<_> = info.members.iter().map(|m| m.subject.clone()).collect();
    assert_eq!(
        subjects,
        [
            None,
            Some("by-code".into()),
            Some("by-alloc".into()),
            Some("any".into())
        ]
    );
}

#[test]
fn an_allocation_scope_follows_migrations() {
    let mut h = Harness::new();
    let out = h.create_as(HOST, verified("host", Scope::Create));
    let (first, code, _) = created(&out, HOST);
    joined(&h.join_as(2, code, verified("p2", Scope::Any)), 2);
    joined(&h.join_as(3, code, verified("p3", Scope::Any)), 3);
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let (_, ticket) = promote_of(&out, 2).expect("conn 2 is promoted");
    let second = h.migrate(2, first, ticket);
    // A credential minted for the first allocation still joins its successor.
    joined(
        &h.join_as(7, code, verified("late", Scope::Allocation(first))),
        7,
    );
    // And one minted for the successor.
    joined(
        &h.join_as(8, code, verified("later", Scope::Allocation(second))),
        8,
    );
}

#[test]
fn peer_joined_events_carry_the_subject() {
    let mut h = Harness::new();
    let out = h.create_as(HOST, verified("alice", Scope::Create));
    let (_, code, _) = created(&out, HOST);
    let out = h.join_as(2, code, verified("bob", Scope::JoinCode(code)));
    let subjects: Vec<_> = [events(&h.create_as(9, Authorization::Open)), events(&out)]
        .concat()
        .into_iter()
        .filter_map(|e| match e {
            Event::PeerJoined { subject, .. } => Some(subject.as_deref().map(str::to_owned)),
            _ => None,
        })
        .collect();
    assert_eq!(subjects, [None, Some("bob".to_owned())]);
}

#[test]
fn a_reconnect_token_is_bound_to_its_subject() {
    let mut h = Harness::new();
    let out = h.create_as(HOST, verified("host", Scope::Create));
    let (id, code, _) = created(&out, HOST);
    let (peer, token) = joined(
        &h.join_as(2, code, verified("bob", Scope::JoinCode(code))),
        2,
    );
    h.disconnect(2, LeaveReason::ConnectionLost);
    // Another player's credential with bob's token: refused like a wrong token.
    let out = h.rejoin_as(
        3,
        id,
        peer,
        token,
        verified("mallory", Scope::JoinCode(code)),
    );
    assert_eq!(refused(&out, 3), (ErrorCode::Unauthorized, 0));
    // A credential whose scope does not cover the allocation.
    let elsewhere = JoinCode::parse("GHJK99").unwrap();
    let out = h.rejoin_as(
        4,
        id,
        peer,
        token,
        verified("bob", Scope::JoinCode(elsewhere)),
    );
    assert_eq!(
        refused(&out, 4),
        unauthorized(CredentialRefusal::WrongScope)
    );
    // A refused credential is refused before the allocation is looked up.
    let out = h.rejoin_as(
        5,
        AllocationId(1),
        peer,
        token,
        Authorization::Refused(CredentialRefusal::Expired),
    );
    assert_eq!(refused(&out, 5), unauthorized(CredentialRefusal::Expired));
    // Bob, with a create credential (the token proves the id): back under the same id and token.
    let out = h.rejoin_as(6, id, peer, token, verified("bob", Scope::Create));
    assert_eq!(joined(&out, 6), (peer, token));
}
