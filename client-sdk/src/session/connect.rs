//! Connecting a session: [`connect()`] makes the QUIC connection, sends the bind request
//! ([`BIND_REQUEST_ID`]) and reads until its reply with [`bind_on`], then builds the [`Session`]
//! from what the relay granted ([`Bound`]) and spawns its tasks. A relay of a fleet may answer a
//! `Join` or `Rejoin` with `Redirect` instead: the connection is closed normally and the same
//! request is sent to the relay it names, once ([`Error::RedirectLoop`] for a second
//! redirect). [`retry_while_migrating`] runs a join again while the allocation is migrating.
//!
//! Runs on the caller's task ([`Host::create`](crate::Host::create),
//! [`Peer::join`](crate::Peer::join), ...), before any session task exists. Calls the reader's
//! frame reading and the tasks' entry points (`dispatch.rs`), [`Shared::new`] (`shared.rs`)
//! and the snapshot tasks ([`crate::snapshot`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_protocol::{ClientMessage, JoinCode, PeerId, ServerMessage};
use quinn::{ConnectError, ConnectionError, RecvStream, SendStream, WriteError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::dispatch::{
    close_after_stream_end, read_message, reply_id, run_reader, run_writer, ReadFailure, ReaderIo,
};
use super::heartbeat;
use super::nat::Dialer;
use super::paths::{self, DirectShared};
use super::resume::Resume;
use super::shared::{Role, Shared};
use super::{close_normally, EventQueue, Session};
use crate::direct::{accept_config, Admitted, DirectError, Identity, SharedEndpoint};
use crate::error::{disconnect_reason, handshake_error, refusal};
use crate::{defaults, snapshot, ClientConfig, DirectPolicy, Error};

/// Request id of the bind request (`CreateAllocation`, `ClaimHost`, `Join` or `Rejoin`); later
/// requests count up from the next value.
pub(crate) const BIND_REQUEST_ID: u32 = 1;

/// What the relay granted in answer to the bind request.
#[derive(Debug)]
pub(crate) enum Bound {
    /// Answer to `CreateAllocation` or `ClaimHost`.
    Created {
        code: JoinCode,
        code_ttl_secs: u32,
        max_peers: u16,
    },
    /// Answer to `Join` or `Rejoin`.
    Joined,
}

/// Connects to the relay, sends `bind` (which must carry [`BIND_REQUEST_ID`]) and returns the
/// session with what the relay granted. Follows one `Redirect` (SPEC section 5.3).
pub(crate) async fn connect(
    config: &ClientConfig,
    bind: ClientMessage,
) -> Result<(Session, Bound), Error> {
    config.validate()?;
    let socket = bind_socket(config.local_addr(), config)?;
    let (conn, reply) = match attempt(config, &socket.endpoint, &bind).await? {
        Attempt::Replied(conn, reply) => (conn, reply),
        Attempt::Redirected {
            target,
            server_name,
        } => {
            let redirected = redirected_config(config, target, server_name)?;
            // Same local socket when it can reach the new relay (a configured bind address
            // stays in use by the closing connection, so it could not be bound twice).
            let socket = match socket.local_addr() {
                Ok(local) if local.is_ipv4() == target.is_ipv4() => socket,
                _ => bind_socket(redirected.local_addr(), &redirected)?,
            };
            match attempt(&redirected, &socket.endpoint, &bind).await? {
                Attempt::Replied(conn, reply) => {
                    return establish(config, &redirected, socket, bind, conn, reply).await;
                }
                Attempt::Redirected { target: again, .. } => {
                    tracing::debug!(relay = %target, target = %again, "second redirect refused");
                    return Err(Error::RedirectLoop {
                        relay: target,
                        target: again,
                    });
                }
            }
        }
    };
    establish(config, config, socket, bind, conn, reply).await
}

/// The session's one UDP socket (SPEC section 17): the relay connection, direct paths and
/// punches all use it. `config`'s network simulator, if any, sits between it and QUIC.
fn bind_socket(local: SocketAddr, config: &ClientConfig) -> Result<SharedEndpoint, Error> {
    SharedEndpoint::bind(local, config.network_simulator.as_ref()).map_err(direct_error)
}

/// The SDK error for a failure setting up the session's socket or direct-path identity.
fn direct_error(e: DirectError) -> Error {
    match e {
        DirectError::Io(e) => Error::Io(e),
        other => Error::Config(other.to_string()),
    }
}

/// Connects to `config.relay` on `endpoint` (the session's, when resuming), sends `bind` and
/// returns the connection with its reply, following one `Redirect` to a relay of the
/// endpoint's address family.
pub(super) async fn rebind(
    config: &ClientConfig,
    endpoint: &quinn::Endpoint,
    bind: &ClientMessage,
    lost: Option<SocketAddr>,
) -> Result<(quinn::Connection, BindResult), Error> {
    match attempt(config, endpoint, bind).await? {
        Attempt::Replied(conn, reply) => Ok((conn, reply)),
        Attempt::Redirected { target, .. } if Some(target) == lost => {
            // The fleet still names the relay this session lost: its directory entry outlives
            // it for a moment (the heartbeat's time to live). Asked again shortly, the relay
            // takes the allocation over instead.
            tracing::debug!(%target, "redirected to the lost relay; asking again");
            Err(Error::Migrating {
                retry_after: defaults::LOST_RELAY_POLL,
            })
        }
        Attempt::Redirected {
            target,
            server_name,
        } => {
            let redirected = redirected_config(config, target, server_name)?;
            if endpoint.local_addr()?.is_ipv4() != target.is_ipv4() {
                return Err(Error::Config(format!(
                    "redirected to {target}, of another address family than this session"
                )));
            }
            match attempt(&redirected, endpoint, bind).await? {
                Attempt::Replied(conn, reply) => Ok((conn, reply)),
                Attempt::Redirected { target: again, .. } => Err(Error::RedirectLoop {
                    relay: target,
                    target: again,
                }),
            }
        }
    }
}

/// What one connection attempt got in answer to the bind request.
enum Attempt {
    /// The relay replied; the control stream and the reply, with the messages before it.
    Replied(quinn::Connection, BindResult),
    /// The relay redirected the request to another relay of its fleet; this connection is
    /// closed.
    Redirected {
        target: SocketAddr,
        server_name: String,
    },
}

/// The configuration for following a redirect: `config` with the relay and server name the
/// redirect named. A redirect to the relay that sent it is refused.
fn redirected_config(
    config: &ClientConfig,
    target: SocketAddr,
    server_name: String,
) -> Result<ClientConfig, Error> {
    if target == config.relay {
        return Err(Error::RedirectLoop {
            relay: config.relay,
            target,
        });
    }
    tracing::debug!(relay = %config.relay, %target, %server_name, "redirected");
    let mut redirected = config.clone().server_name(server_name);
    redirected.relay = target;
    // The name decoded as a DNS name or IP literal; this also checks that a configured bind
    // address can reach the new relay's address family.
    redirected.validate()?;
    Ok(redirected)
}

/// Connects to `config.relay` on `endpoint`, sends `bind` and reads its reply. A `Redirect`
/// answering a `Join` or `Rejoin` closes the connection normally and is returned.
async fn attempt(
    config: &ClientConfig,
    endpoint: &quinn::Endpoint,
    bind: &ClientMessage,
) -> Result<Attempt, Error> {
    let (quinn_config, verify_log) = config.quinn_config()?;
    let started = std::time::Instant::now();
    let relay = config.relay;
    let connecting = endpoint
        .connect_with(quinn_config, relay, &config.server_name)
        .map_err(|e| match e {
            ConnectError::InvalidServerName(name) => {
                Error::Config(format!("invalid server name {name:?}"))
            }
            other => Error::RelayUnreachable {
                addr: relay,
                detail: other.to_string(),
            },
        })?;
    let conn = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            let err = handshake_error(&e, relay, verify_log.take_since(started));
            tracing::debug!(%relay, cause = %e, error = %err, "handshake failed");
            return Err(err);
        }
        Err(_) => {
            return Err(match verify_log.take_since(started) {
                Some(failure) => failure.into_error(),
                None => Error::RelayUnreachable {
                    addr: relay,
                    detail: format!("no QUIC handshake within {:?}", config.connect_timeout),
                },
            })
        }
    };
    tracing::debug!(%relay, rtt = ?conn.rtt(), "connected to relay");

    let result = match bind_on(&conn, bind, config.request_timeout).await {
        Ok(result) => result,
        Err(err) => {
            close_normally(&conn);
            return Err(err);
        }
    };
    match (bind, result.2) {
        (
            ClientMessage::Join { .. } | ClientMessage::Rejoin { .. },
            ServerMessage::Redirect {
                address,
                server_name,
                ..
            },
        ) => {
            // The relay never bound this connection: a normal close tells it we are done.
            close_normally(&conn);
            Ok(Attempt::Redirected {
                target: address,
                server_name,
            })
        }
        (_, reply) => Ok(Attempt::Replied(
            conn,
            (result.0, result.1, reply, result.3),
        )),
    }
}

/// Builds the session from the relay's reply to `bind` on `conn`, or the error its refusal
/// means. `config` is the relay's (a redirect's target), `origin` the application's, which a
/// resume starts from.
async fn establish(
    origin: &ClientConfig,
    config: &ClientConfig,
    socket: SharedEndpoint,
    bind: ClientMessage,
    conn: quinn::Connection,
    (send, recv, reply, early): BindResult,
) -> Result<(Session, Bound), Error> {
    let relay = config.relay;
    let SharedEndpoint { endpoint, punch } = socket;
    let join_code = match &bind {
        ClientMessage::Join { code, .. } => Some(*code),
        _ => None,
    };
    let (role, local_peer, max_payload, members, bound) = match (bind, reply) {
        (
            ClientMessage::CreateAllocation { .. } | ClientMessage::ClaimHost { .. },
            ServerMessage::AllocationCreated {
                allocation,
                code,
                code_ttl_secs,
                max_peers,
                max_payload,
                reconnect_token,
                host_loss_timeout_ms,
                ..
            },
        ) => (
            Role::new(
                allocation,
                PeerId::HOST,
                Some(code),
                reconnect_token,
                host_loss_timeout_ms,
            ),
            PeerId::HOST,
            max_payload,
            Vec::new(),
            Bound::Created {
                code,
                code_ttl_secs,
                max_peers,
            },
        ),
        (
            ClientMessage::Join { .. } | ClientMessage::Rejoin { .. },
            ServerMessage::Joined {
                allocation,
                peer,
                max_payload,
                host,
                reconnect_token,
                host_loss_timeout_ms,
                members,
                ..
            },
        ) => (
            Role::new(
                allocation,
                host,
                join_code,
                reconnect_token,
                host_loss_timeout_ms,
            ),
            peer,
            max_payload,
            members,
            Bound::Joined,
        ),
        (_, ServerMessage::Refused { code, value, .. }) => {
            close_normally(&conn);
            let err = refusal(code, value);
            tracing::debug!(%relay, %code, value, error = %err, "bind refused");
            return Err(err);
        }
        (bind, reply) => {
            close_normally(&conn);
            return Err(Error::Protocol(format!(
                "relay answered request type 0x{:02x} with message type 0x{:02x}",
                bind.type_byte(),
                reply.type_byte()
            )));
        }
    };

    let allocation = role.allocation;
    let mut member_set: BTreeSet<PeerId> = members.into_iter().collect();
    if let Some(host) = role.host {
        member_set.insert(host);
    }
    member_set.insert(local_peer);
    let (stream_tx, stream_rx) = mpsc::channel(2);
    let resume = Arc::new(Resume::new(origin, &endpoint, stream_tx));
    // Direct paths: this session's identity, and the members whose certificates it accepts.
    let direct = match origin.direct {
        DirectPolicy::Prefer => {
            let identity = Identity::generate().map_err(direct_error)?;
            let admitted = Admitted::default();
            let server = accept_config(&identity, &admitted).map_err(direct_error)?;
            endpoint.set_server_config(Some(server));
            let (shared, ends) = DirectShared::new();
            Some((shared, ends, Arc::new(identity), admitted))
        }
        DirectPolicy::Never => None,
    };
    let (direct_shared, direct_rest) = match direct {
        Some((shared, ends, identity, admitted)) => {
            (Some(shared), Some((ends, identity, admitted)))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared::new(
        conn,
        local_peer,
        role,
        member_set,
        (
            !origin.effective_resume_window().is_zero(),
            origin.fallback_relays.clone(),
        ),
        direct_shared,
    ));
    if origin.direct == DirectPolicy::Prefer {
        // NAT-kind measurement (`nat.rs`): from this socket, as the relay was reached.
        let (client, _) = config.quinn_config()?;
        shared.nat.enable(
            Dialer {
                endpoint: endpoint.clone(),
                client,
                server_name: config.server_name.clone(),
            },
            std::time::Instant::now(),
        );
    }
    let (event_tx, event_rx) = mpsc::channel(defaults::EVENT_QUEUE);
    let (request_tx, request_rx) = mpsc::channel(defaults::REQUEST_QUEUE);
    let (snapshot_tx, snapshot_rx) = mpsc::channel(1);
    let mut reader = ReaderIo {
        events: event_tx.clone(),
        requests: request_tx.clone(),
        snapshots: snapshot_rx,
        wait: config.request_timeout,
    };
    for message in early {
        shared.dispatch(message, &mut reader).await;
    }
    let span = tracing::info_span!("baton", alloc = %allocation, peer = %local_peer);
    let mut tasks = JoinSet::new();
    tasks.spawn(run_reader(shared.clone(), recv, reader, resume).instrument(span.clone()));
    tasks.spawn(run_writer(shared.clone(), send, request_rx, stream_rx).instrument(span.clone()));
    tasks.spawn(heartbeat::run(shared.clone()).instrument(span.clone()));
    tasks.spawn(
        snapshot::receive(shared.clone(), snapshot_tx, config.max_snapshot)
            .instrument(span.clone()),
    );
    tasks.spawn(
        snapshot::stage(
            shared.clone(),
            event_tx.clone(),
            config.snapshot_interval,
            config.request_timeout,
        )
        .instrument(span.clone()),
    );
    if let Some((ends, identity, admitted)) = direct_rest {
        tasks.spawn(
            paths::run_accept_loop(endpoint.clone(), admitted.clone(), ends.accepted())
                .instrument(span.clone()),
        );
        let io = paths::DriverIo {
            endpoint: endpoint.clone(),
            punch,
            identity,
            admitted,
            requests: request_tx.clone(),
            events: event_tx,
            ends,
            request_timeout: config.request_timeout,
        };
        tasks.spawn(paths::run_driver(shared.clone(), io).instrument(span.clone()));
    }
    span.in_scope(|| tracing::info!(%relay, max_payload, "bound to allocation"));

    let session = Session {
        shared,
        endpoint,
        requests: request_tx,
        events: tokio::sync::Mutex::new(EventQueue::new(event_rx)),
        local_peer,
        max_payload: usize::from(max_payload),
        request_timeout: config.request_timeout,
        _tasks: tasks,
    };
    Ok((session, bound))
}

/// Runs `attempt` again while the relay answers [`Error::Migrating`], for at most `window`: an
/// allocation is migrating for a moment, and its join code then resolves to the successor.
pub(crate) async fn retry_while_migrating<T, F, Fut>(
    window: Duration,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + window;
    loop {
        match attempt().await {
            Err(Error::Migrating { retry_after }) => {
                let wait =
                    retry_after.clamp(defaults::MIGRATION_POLL_MIN, defaults::MIGRATION_POLL_MAX);
                if tokio::time::Instant::now() + wait > deadline {
                    return Err(Error::Migrating { retry_after });
                }
                tracing::debug!(?wait, "allocation migrating; retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// The control stream halves, the bind reply, and any other messages that came before it.
type BindResult = (SendStream, RecvStream, ServerMessage, Vec<ServerMessage>);

/// Opens the control stream, sends `bind` and reads until its reply.
async fn bind_on(
    conn: &quinn::Connection,
    bind: &ClientMessage,
    timeout: Duration,
) -> Result<BindResult, Error> {
    let disconnected = |e: &ConnectionError| Error::Disconnected(disconnect_reason(e));
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| disconnected(&e))?;
    // The relay learns of the stream only when data arrives on it: send the request at once.
    send.write_all(&bind.to_frame())
        .await
        .map_err(|e| match e {
            WriteError::ConnectionLost(e) => disconnected(&e),
            other => Error::Protocol(format!("cannot write the control stream: {other}")),
        })?;
    let id = bind.request_id();
    let read_reply = async {
        let mut early = Vec::new();
        let mut buf = Vec::new();
        loop {
            let message = match read_message(&mut recv, &mut buf).await {
                Ok(message) => message,
                Err(ReadFailure::Connection(e)) => return Err(disconnected(&e)),
                Err(ReadFailure::Ended(detail)) => {
                    return Err(match close_after_stream_end(conn).await {
                        Some(e) => disconnected(&e),
                        None => Error::Protocol(detail),
                    })
                }
                Err(ReadFailure::Invalid(detail)) => return Err(Error::Protocol(detail)),
            };
            if reply_id(&message) == Some(id) {
                return Ok((message, early));
            }
            if early.len() >= defaults::EVENT_QUEUE {
                return Err(Error::Protocol(
                    "too many control messages before the bind reply".into(),
                ));
            }
            early.push(message);
        }
    };
    let (reply, early) = tokio::time::timeout(timeout, read_reply)
        .await
        .map_err(|_| Error::RequestTimedOut { timeout })??;
    Ok((send, recv, reply, early))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn joins_retry_while_migrating_within_the_window() {
        let mut calls = 0;
        let result: Result<u32, Error> = retry_while_migrating(Duration::from_secs(2), || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(Error::Migrating {
                        retry_after: Duration::from_millis(300),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);

        let start = tokio::time::Instant::now();
        let result: Result<(), Error> = retry_while_migrating(Duration::from_secs(2), || async {
            Err(Error::Migrating {
                retry_after: Duration::from_millis(700),
            })
        })
        .await;
        assert!(matches!(result, Err(Error::Migrating { .. })));
        assert!(start.elapsed() <= Duration::from_secs(2));
        // Other errors are not retried.
        let mut calls = 0;
        let result: Result<(), Error> = retry_while_migrating(Duration::from_secs(2), || {
            calls += 1;
            async { Err(Error::Unauthorized) }
        })
        .await;
        assert!(matches!(result, Err(Error::Unauthorized)));
        assert_eq!(calls, 1);
    }
}
