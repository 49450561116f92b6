//! # Baton relay
//!
//! A QUIC relay for client-hosted multiplayer games: a host opens an *allocation* and gets a
//! short join code, peers join by code, and the relay forwards datagrams between members. A
//! client silent for the keepalive timeout (10 s) is removed and the others are told why.
//!
//! ## Concurrency model
//! The async side is the private `driver` module, one file per concern (its module doc maps
//! them); the control plane knows nothing of it.
//! - [`control::ControlPlane`] is a sans-IO state machine (allocations, membership, join codes,
//!   deadlines, rate limits). One task owns it (`driver::control_task`); connection tasks send
//!   it inputs over a bounded channel and it answers with outputs the driver carries out,
//!   lifecycle events going to `driver::events` (metrics, logs, hooks).
//! - The data plane (`driver::forward`) never goes through the control plane or any global
//!   lock: each connection's task reads datagrams, looks up its allocation's routing table
//!   (`driver::routing`, an `Arc` swapped by the control task on membership change) and sends
//!   to the destination connection. Queues are bounded; what cannot be queued is dropped and
//!   counted by reason.
//! - Each QUIC endpoint runs on its own data-plane thread (`driver::lane`, a single-threaded
//!   runtime): its driver, its accept loop (`driver::accept`), its connections' drivers and
//!   their tasks (`driver::connection`, with `driver::control_stream` and `driver::snapshot`)
//!   wake each other without crossing threads. `driver::socket` binds the endpoints' sockets on
//!   one port, and [`steering`] keeps each client on the endpoint that knows its connection.
//!   The control plane, admin server and hooks run on the caller's runtime.
//! - The admin HTTP server reads metrics directly and asks the control task for allocation
//!   views through [`RelayHandle`].
//! - [`hooks`] tells lobbies about lifecycle events: publishing never blocks the control task;
//!   one task per webhook delivers from a bounded queue, and the admin server's event stream
//!   reads a bounded replay buffer.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
mod crypto;
pub mod defaults;
pub mod directory;
mod driver;
pub mod hooks;
pub mod metrics;
mod prefix;
pub mod tls;

pub use config::{ConfigError, ProbeListen, RelayConfig, TlsSource};
pub use driver::{steering, transport_config, Relay, RelayError, RelayHandle};
