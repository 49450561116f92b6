//! Relay metrics, declared in one place with their help text and exported in Prometheus text
//! format on the admin server's `/metrics`.
//!
//! Hot-path counters are plain atomics resolved once at start-up (one per label value), so
//! counting a forwarded or dropped datagram never takes a lock or hashes a label set.
//!
//! One [`Metrics`] per relay, shared as an `Arc`: updated from every task and data-plane lane
//! (connections, the control task, the hooks) and exported by [`Metrics::encode`], which the
//! admin server's `/metrics` serves. It calls nothing but prometheus-client.

use baton_protocol::credential::CredentialRefusal;
use baton_protocol::{DropReason, ErrorCode, LeaveReason, PathReason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Registers a new metric of type `M` as `name` with `help`; returns the handle that updates it.
fn register<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// The counter of `reason` in `family`.
fn reason_counter(family: &Family<ReasonLabel, Counter>, reason: &'static str) -> Counter {
    family.get_or_create(&ReasonLabel { reason }).clone()
}

/// The counter of `family` labelled `result`, created at zero if new. (The family's guard is
/// gone when this returns, before the next insert.)
fn result_counter(family: &Family<ResultLabel, Counter>, result: &'static str) -> Counter {
    family.get_or_create(&ResultLabel { result }).clone()
}

/// Counters indexed by a wire enum's byte value, pre-registered for every defined variant.
#[derive(Debug)]
pub struct ByReason {
    counters: Vec<(u8, Counter)>,
    other: Counter,
}

impl ByReason {
    /// Registers the family `name` with a counter for each `(value, label)` of `all`, and one
    /// labelled `unknown` for any other value.
    fn register(
        registry: &mut Registry,
        name: &str,
        help: &str,
        all: impl Iterator<Item = (u8, &'static str)>,
    ) -> Self {
        let family: Family<ReasonLabel, Counter> = register(registry, name, help);
        let counters = all
            .map(|(v, name)| {
                (
                    v,
                    family.get_or_create(&ReasonLabel { reason: name }).clone(),
                )
            })
            .collect();
        let other = family
            .get_or_create(&ReasonLabel { reason: "unknown" })
            .clone();
        ByReason { counters, other }
    }

    fn get(&self, v: u8) -> &Counter {
        self.counters
            .iter()
            .find(|(k, _)| *k == v)
            .map(|(_, c)| c)
            .unwrap_or(&self.other)
    }
}

/// Every metric the relay exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open QUIC connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_accepted: Counter,
    /// Hosts closed with code 9 because they were silent for their allocation's host-loss
    /// timeout (each then migrated).
    pub host_unresponsive: Counter,
    /// Connection attempts refused at accept (or closed at the end of their handshake), by
    /// reason.
    pub connections_refused: ConnectionRefusals,
    /// QUIC handshakes in flight: accepted, not yet established.
    pub handshakes_in_flight: Gauge,
    /// QUIC Retry packets sent (address validation above the handshake threshold).
    pub retries_sent: Counter,
    /// `baton_nat_probes_total{result=...}`: NAT probes on the probe port (SPEC section 17.5).
    pub nat_probes: NatProbes,
    /// `baton_tls_tickets_total{result=...}`: TLS session tickets issued, and presented by
    /// clients resuming (SPEC section 2.1).
    pub tls_tickets: TlsTickets,
    /// Live allocations.
    pub allocations: Gauge,
    /// Allocations created since start.
    pub allocations_created: Counter,
    /// Successful joins by code since start.
    pub joins: Counter,
    /// Members that came back with a reconnect token since start.
    pub rejoins: Counter,
    /// Datagrams delivered to a member (a broadcast counts once per receiver).
    pub datagrams_forwarded: Counter,
    /// Payload bytes delivered to members.
    pub bytes_forwarded: Counter,
    /// Bytes of migration-snapshot uploads being read now, across all connections.
    pub snapshot_upload_bytes: Gauge,
    dropped: ByReason,
    refused: ByReason,
    credentials_refused: ByReason,
    left: ByReason,
    direct_paths: Vec<Counter>,
    /// Lobby hook counters (see [`crate::hooks`]).
    pub hooks: HookMetrics,
    /// Admin HTTP server connections (see [`crate::admin`]).
    pub admin: AdminMetrics,
    /// What each per-client limit held back.
    pub limited: LimitMetrics,
    /// Datagrams held for members on their way to an adopted allocation, by what became of
    /// them.
    pub held: HeldMetrics,
    /// How late each data-plane lane's probe timer fired (see `driver::lane`): how long a lane
    /// thread was busy or blocked while a ready task waited, every datagram it carries with it.
    pub lane_delay: Histogram,
    /// Fleet directory operations (see [`crate::directory`]).
    pub directory: DirectoryMetrics,
    /// Fleet mode: directory record writes dropped because the writer's queue was full (the
    /// records they would have refreshed expire by their TTL).
    pub directory_records_dropped: Counter,
    node_info: Family<NodeLabels, Gauge>,
}

/// Labels of `baton_direct_paths_total`: a `PathReport`'s outcome and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
    region: String,
}

/// Bucket bounds of [`Metrics::lane_delay`], in seconds. Tokio's timers tick in milliseconds,
/// so the first bucket holds every on-time probe.
pub const LANE_DELAY_BUCKETS: [f64; 9] = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let connections: Gauge = register(&mut registry, "connections", "Open QUIC connections");
        let connections_accepted: Counter = register(
            &mut registry,
            "connections_accepted",
            "QUIC connections accepted",
        );
        let host_unresponsive: Counter = register(
            &mut registry,
            "host_unresponsive",
            "Hosts closed as unresponsive after their allocation's host-loss timeout of silence",
        );
        let family: Family<ReasonLabel, Counter> = register(
            &mut registry,
            "connections_refused",
            "QUIC connection attempts refused, by reason: their IPv4 address or IPv6 /64 (per_address) or IPv4 /24 or IPv6 /48 (per_prefix) holds its share of connections, the relay holds max_connections established connections (max_connections), or as many handshakes are in flight (handshakes)",
        );
        let connections_refused = ConnectionRefusals {
            per_address: reason_counter(&family, "per_address"),
            per_prefix: reason_counter(&family, "per_prefix"),
            max_connections: reason_counter(&family, "max_connections"),
            handshakes: reason_counter(&family, "handshakes"),
        };
        let handshakes_in_flight: Gauge = register(
            &mut registry,
            "handshakes_in_flight",
            "QUIC handshakes accepted and not yet established",
        );
        let retries_sent: Counter = register(
            &mut registry,
            "retries_sent",
            "QUIC Retry packets sent to validate a new client's address, above the handshake threshold",
        );
        let probes: Family<ResultLabel, Counter> = register(
            &mut registry,
            "nat_probes",
            "NAT probes on the probe port, by result: answered (the client was told the address the relay saw), refused (over the per-source rate or the concurrent-probe cap, refused at accept)",
        );
        let nat_probes = NatProbes {
            answered: result_counter(&probes, "answered"),
            refused: result_counter(&probes, "refused"),
        };
        let tickets: Family<ResultLabel, Counter> = register(
            &mut registry,
            "tls_tickets",
            "TLS session tickets by result: issued (one per handshake), accepted (a client resumed with one: no certificate signature), rejected (a ticket the relay could not open: expired key, another node's, or forged; a full handshake follows)",
        );
        let tls_tickets = TlsTickets {
            issued: result_counter(&tickets, "issued"),
            accepted: result_counter(&tickets, "accepted"),
            rejected: result_counter(&tickets, "rejected"),
        };
        let allocations: Gauge = register(&mut registry, "allocations", "Live allocations");
        let allocations_created: Counter =
            register(&mut registry, "allocations_created", "Allocations created");
        let joins: Counter = register(&mut registry, "joins", "Successful joins by code");
        let rejoins: Counter = register(
            &mut registry,
            "rejoins",
            "Members that came back with a reconnect token",
        );
        let datagrams_forwarded: Counter = register(
            &mut registry,
            "datagrams_forwarded",
            "Datagrams delivered to a member (broadcasts count once per receiver)",
        );
        let bytes_forwarded: Counter = register(
            &mut registry,
            "bytes_forwarded",
            "Datagram payload bytes delivered to members",
        );
        let snapshot_upload_bytes: Gauge = register(
            &mut registry,
            "snapshot_upload_bytes",
            "Bytes of migration-snapshot uploads being read now (not yet stored)",
        );

        let dropped = ByReason::register(
            &mut registry,
            "datagrams_dropped",
            "Datagrams dropped by the relay, by reason",
            DropReason::ALL.iter().map(|r| (r.to_u8(), r.as_str())),
        );

        let refused = ByReason::register(
            &mut registry,
            "requests_refused",
            "Create, join, kick and revoke requests refused, by reason",
            ErrorCode::ALL.iter().map(|r| (r.to_u8(), r.as_str())),
        );

        let credentials_refused = ByReason::register(
            &mut registry,
            "credentials_refused",
            "Create, join and rejoin requests refused for their credential, by reason",
            CredentialRefusal::ALL
                .iter()
                .map(|r| (u8::try_from(r.value()).unwrap_or(0), r.as_str())),
        );

        let left = ByReason::register(
            &mut registry,
            "members_left",
            "Members that left an allocation, by reason",
            LeaveReason::ALL.iter().map(|r| (r.to_u8(), r.as_str())),
        );

        // One series per reason, with the one outcome it goes with (the relay refuses a
        // report whose pair does not match), so the label set is fixed.
        let paths: Family<PathLabels, Counter> = register(
            &mut registry,
            "direct_paths",
            "Direct-path attempts as clients reported them (PathReport), by outcome (direct or relayed) and reason",
        );
        let direct_paths = PathReason::ALL
            .iter()
            .map(|r| {
                paths
                    .get_or_create(&PathLabels {
                        outcome: r.outcome().as_str(),
                        reason: r.as_str(),
                    })
                    .clone()
            })
            .collect();

        let hooks = HookMetrics::register(&mut registry);
        let admin = AdminMetrics::register(&mut registry);
        let limited = LimitMetrics::register(&mut registry);
        let held = HeldMetrics::register(&mut registry);
        let lane_delay = Histogram::new(LANE_DELAY_BUCKETS);
        registry.register(
            "lane_delay_seconds",
            "How late a data-plane lane's periodic probe timer fired: how long the lane thread was busy or blocked while its ready tasks, and the datagrams they carry, waited (timer resolution 1 ms)",
            lane_delay.clone(),
        );

        let directory = DirectoryMetrics::register(&mut registry);

        let node_info: Family<NodeLabels, Gauge> = register(
            &mut registry,
            "node_info",
            "1, labelled with this fleet node's id and region (absent on a relay standing alone)",
        );
        let directory_records_dropped: Counter = register(
            &mut registry,
            "directory_records_dropped",
            "Fleet directory record writes dropped because the writer's queue was full (their records expire by TTL)",
        );

        Metrics {
            registry,
            connections,
            connections_accepted,
            host_unresponsive,
            connections_refused,
            handshakes_in_flight,
            retries_sent,
            nat_probes,
            tls_tickets,
            allocations,
            allocations_created,
            joins,
            rejoins,
            datagrams_forwarded,
            bytes_forwarded,
            snapshot_upload_bytes,
            dropped,
            refused,
            credentials_refused,
            left,
            direct_paths,
            hooks,
            admin,
            limited,
            held,
            lane_delay,
            directory,
            directory_records_dropped,
            node_info,
        }
    }

    /// Labels this relay as fleet node `node` in `region` (`baton_node_info`).
    pub fn set_node(&self, node: &str, region: &str) {
        self.node_info
            .get_or_create(&NodeLabels {
                node: node.to_owned(),
                region: region.to_owned(),
            })
            .set(1);
    }

    /// The drop counter for `reason`.
    pub fn dropped(&self, reason: DropReason) -> &Counter {
        self.dropped.get(reason.to_u8())
    }

    /// The refusal counter for `code`.
    pub fn refused(&self, code: ErrorCode) -> &Counter {
        self.refused.get(code.to_u8())
    }

    /// The credential refusal counter for `reason`.
    pub fn credential_refused(&self, reason: CredentialRefusal) -> &Counter {
        self.credentials_refused
            .get(u8::try_from(reason.value()).unwrap_or(0))
    }

    /// The departure counter for `reason`.
    pub fn left(&self, reason: LeaveReason) -> &Counter {
        self.left.get(reason.to_u8())
    }

    /// The counter of path reports with `reason` (and the outcome it goes with).
    pub fn direct_path(&self, reason: PathReason) -> &Counter {
        // `direct_paths` holds one counter per `PathReason::ALL` entry, in that order.
        let i = PathReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        &self.direct_paths[i]
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: &'static str,
}

/// Lobby hook metrics: what was published, delivered, retried and dropped, per sink
/// (`webhook` or `stream`).
#[derive(Debug)]
pub struct HookMetrics {
    /// Lifecycle events published to the hooks.
    pub published: Counter,
    /// Events a webhook's lobby acknowledged with a 2xx answer.
    pub webhook_delivered: Counter,
    /// Webhook requests that failed (non-2xx answer, timeout, connection error) and will be
    /// retried.
    pub webhook_failed_attempts: Counter,
    /// Events waiting in webhook queues, all webhooks together.
    pub webhook_queued: Gauge,
    /// Events a webhook never got: its queue was full, or the relay stopped first.
    pub webhook_dropped: Counter,
    /// Events an event-stream subscriber skipped because it fell further behind than the replay
    /// buffer holds (it is sent a `replay.gap` signal).
    pub stream_dropped: Counter,
    /// Open event-stream (`GET /v1/events`) subscriptions.
    pub stream_subscribers: Gauge,
    /// Event stream subscriptions refused at the subscriber limit.
    pub stream_refused: Counter,
}

impl HookMetrics {
    fn register(registry: &mut Registry) -> Self {
        let published: Counter = register(
            registry,
            "hook_events_published",
            "Lifecycle events published to lobby hooks",
        );
        let webhook_delivered: Counter = register(
            registry,
            "hook_webhook_delivered",
            "Events acknowledged by a webhook with a 2xx answer",
        );
        let webhook_failed_attempts: Counter = register(
            registry,
            "hook_webhook_failed_attempts",
            "Webhook requests that failed (non-2xx, timeout, connection error) and are retried",
        );
        let webhook_queued: Gauge = register(
            registry,
            "hook_webhook_queued",
            "Events waiting in webhook queues",
        );
        let family: Family<SinkLabel, Counter> = register(
            registry,
            "hook_events_dropped",
            "Lifecycle events a sink never got: webhook queue full or relay stopped; stream subscriber behind the replay buffer",
        );
        let webhook_dropped = family.get_or_create(&SinkLabel { sink: "webhook" }).clone();
        let stream_dropped = family.get_or_create(&SinkLabel { sink: "stream" }).clone();
        let stream_subscribers: Gauge = register(
            registry,
            "hook_stream_subscribers",
            "Open event stream subscriptions",
        );
        let refused: Family<ReasonLabel, Counter> = register(
            registry,
            "hook_stream_subscriptions_refused",
            "Event stream subscriptions refused, by reason (subscriber_limit)",
        );
        let stream_refused = reason_counter(&refused, "subscriber_limit");
        HookMetrics {
            published,
            webhook_delivered,
            webhook_failed_attempts,
            webhook_queued,
            webhook_dropped,
            stream_dropped,
            stream_subscribers,
            stream_refused,
        }
    }
}

/// `baton_connections_refused_total{reason=...}`: QUIC connection attempts refused, by reason.
#[derive(Debug)]
pub struct ConnectionRefusals {
    /// Its IPv4 address or IPv6 /64 held its share of connections.
    pub per_address: Counter,
    /// Its IPv4 /24 or IPv6 /48 held its share of connections.
    pub per_prefix: Counter,
    /// The relay held `max_connections` established connections.
    pub max_connections: Counter,
    /// As many handshakes were in flight as `max_connections`.
    pub handshakes: Counter,
}

/// `baton_nat_probes_total{result=...}`: NAT probes on the probe port.
#[derive(Debug)]
pub struct NatProbes {
    /// The probe was answered with the address the relay saw.
    pub answered: Counter,
    /// The attempt was refused at accept: its source was over its rate, or the relay held
    /// its cap of probe connections.
    pub refused: Counter,
}

/// `baton_tls_tickets_total{result=...}`: the relay's TLS session tickets. Clones count into
/// the same series.
#[derive(Debug, Clone, Default)]
pub struct TlsTickets {
    /// Tickets issued (one per completed handshake).
    pub issued: Counter,
    /// Tickets a client presented that the relay opened: the handshake resumes.
    pub accepted: Counter,
    /// Tickets a client presented that the relay could not open (its key rotated out, another
    /// relay's, or forged): a full handshake follows.
    pub rejected: Counter,
}

/// Admin HTTP server metrics: open connections, and connections refused by reason.
#[derive(Debug)]
pub struct AdminMetrics {
    /// Open admin HTTP connections.
    pub connections: Gauge,
    /// Connections closed at accept because the admin connection limit was reached.
    pub refused_at_limit: Counter,
    /// Connections closed because a request's headers did not arrive within the header
    /// timeout (a new connection's first request, or the next one on a kept-alive connection).
    pub refused_header_timeout: Counter,
}

impl AdminMetrics {
    fn register(registry: &mut Registry) -> Self {
        let connections: Gauge =
            register(registry, "admin_connections", "Open admin HTTP connections");
        let family: Family<ReasonLabel, Counter> = register(
            registry,
            "admin_connections_refused",
            "Admin HTTP connections refused, by reason: closed at accept over the connection limit (connection_limit), or closed when a request's headers did not arrive in time (header_timeout)",
        );
        let refused_at_limit = reason_counter(&family, "connection_limit");
        let refused_header_timeout = reason_counter(&family, "header_timeout");
        AdminMetrics {
            connections,
            refused_at_limit,
            refused_header_timeout,
        }
    }
}

/// Reading metrics in tests: whole exposition lines, never substrings.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    use super::Metrics;

    /// The value on the line that starts with `line_start` (a name with its labels, and for an
    /// unlabelled metric a trailing space, so `baton_x ` does not match `baton_x_total`).
    pub(crate) fn value(metrics: &Metrics, line_start: &str) -> u64 {
        let text = metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_start}:\n{text}"))
    }

    /// Waits, polling for at most `within`, until the metric on `line_start` is `want`.
    pub(crate) async fn wait_for(metrics: &Metrics, line_start: &str, want: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while value(metrics, line_start) != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{line_start} is {}, not {want}",
                value(metrics, line_start)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// What each per-client limit held back, as `baton_rate_limited_total{limit=...}`: datagrams
/// dropped by the sender's datagram and byte limits and by its allocation's bandwidth cap
/// (all reported as `rate_limited`), and control requests delayed by the request budget.
#[derive(Debug)]
pub struct LimitMetrics {
    /// Datagrams dropped by `client_datagrams_per_second`.
    pub client_datagrams: Counter,
    /// Datagrams dropped by `client_bytes_per_second`.
    pub client_bytes: Counter,
    /// Datagrams (one per receiver) dropped by `allocation_bytes_per_second`.
    pub allocation_bytes: Counter,
    /// Control requests delayed by `client_requests_per_second`.
    pub client_requests: Counter,
}

impl LimitMetrics {
    fn register(registry: &mut Registry) -> Self {
        let family: Family<LimitLabel, Counter> = register(
            registry,
            "rate_limited",
            "Datagrams dropped (client_datagrams, client_bytes, allocation_bytes) and control requests delayed (client_requests), by per-client limit",
        );
        let counter = |limit| family.get_or_create(&LimitLabel { limit }).clone();
        LimitMetrics {
            client_datagrams: counter("client_datagrams"),
            client_bytes: counter("client_bytes"),
            allocation_bytes: counter("allocation_bytes"),
            client_requests: counter("client_requests"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// `baton_held_datagrams_total{outcome=...}`: datagrams addressed to members on their way to
/// an adopted allocation (a relocated or taken-over game), held until they arrive.
#[derive(Debug)]
pub struct HeldMetrics {
    /// Queued for a member on its way.
    pub held: Counter,
    /// Handed to the member when it arrived.
    pub delivered: Counter,
    /// Too old to deliver when the member arrived.
    pub stale: Counter,
    /// Pushed out of a full queue by newer ones.
    pub evicted: Counter,
    /// Not held: the relay's budget for held datagrams was spent.
    pub over_budget: Counter,
    /// Dropped because the member was no longer awaited.
    pub abandoned: Counter,
}

impl HeldMetrics {
    fn register(registry: &mut Registry) -> Self {
        let family: Family<OutcomeLabel, Counter> = register(
            registry,
            "held_datagrams",
            "Datagrams for members on their way to an adopted (relocated or taken-over) allocation, by outcome: held, then delivered, stale, evicted or abandoned; over_budget were not held",
        );
        let counter = |outcome| family.get_or_create(&OutcomeLabel { outcome }).clone();
        HeldMetrics {
            held: counter("held"),
            delivered: counter("delivered"),
            stale: counter("stale"),
            evicted: counter("evicted"),
            over_budget: counter("over_budget"),
            abandoned: counter("abandoned"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// A fleet directory operation, as the `op` label of the directory metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirectoryOp {
    /// Connecting to the store.
    Connect,
    /// Writing this node's record.
    Heartbeat,
    /// Listing live nodes.
    Nodes,
    /// Reading one node's record.
    Node,
    /// Removing this node's record.
    RemoveNode,
    /// Claiming join codes.
    ClaimCodes,
    /// Binding a claimed code to an allocation.
    BindCode,
    /// Resolving a join code.
    LookupCode,
    /// Releasing a join code.
    ReleaseCode,
    /// Recording which node holds an allocation.
    BindAllocation,
    /// Finding the node that holds an allocation.
    LookupAllocation,
    /// Releasing an allocation record.
    ReleaseAllocation,
    /// Writing an allocation's takeover record.
    PutRecord,
    /// Reading an allocation's takeover record.
    GetRecord,
    /// Deleting an allocation's takeover record.
    DeleteRecord,
    /// Moving an allocation from a lost node to this one.
    TakeAllocation,
    /// Moving a join code from a lost node to this one.
    TakeCode,
}

impl DirectoryOp {
    /// Every operation, in label order.
    pub const ALL: [DirectoryOp; 17] = [
        DirectoryOp::Connect,
        DirectoryOp::Heartbeat,
        DirectoryOp::Nodes,
        DirectoryOp::Node,
        DirectoryOp::RemoveNode,
        DirectoryOp::ClaimCodes,
        DirectoryOp::BindCode,
        DirectoryOp::LookupCode,
        DirectoryOp::ReleaseCode,
        DirectoryOp::BindAllocation,
        DirectoryOp::LookupAllocation,
        DirectoryOp::ReleaseAllocation,
        DirectoryOp::PutRecord,
        DirectoryOp::GetRecord,
        DirectoryOp::DeleteRecord,
        DirectoryOp::TakeAllocation,
        DirectoryOp::TakeCode,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DirectoryOp::Connect => "connect",
            DirectoryOp::Heartbeat => "heartbeat",
            DirectoryOp::Nodes => "nodes",
            DirectoryOp::Node => "node",
            DirectoryOp::RemoveNode => "remove_node",
            DirectoryOp::ClaimCodes => "claim_codes",
            DirectoryOp::BindCode => "bind_code",
            DirectoryOp::LookupCode => "lookup_code",
            DirectoryOp::ReleaseCode => "release_code",
            DirectoryOp::BindAllocation => "bind_allocation",
            DirectoryOp::LookupAllocation => "lookup_allocation",
            DirectoryOp::ReleaseAllocation => "release_allocation",
            DirectoryOp::PutRecord => "put_record",
            DirectoryOp::GetRecord => "get_record",
            DirectoryOp::DeleteRecord => "delete_record",
            DirectoryOp::TakeAllocation => "take_allocation",
            DirectoryOp::TakeCode => "take_code",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Bucket bounds of `baton_directory_op_seconds`, in seconds: a same-region store answers in
/// about a millisecond; the last bound is the directory's operation timeout (500 ms).
pub const DIRECTORY_OP_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
];

/// Fleet directory metrics: `baton_directory_op_seconds{op}` (every operation's duration,
/// failed ones included) and `baton_directory_errors_total{op}` (operations that failed:
/// store unavailable or timed out, or a corrupt value), each label pre-registered.
#[derive(Debug)]
pub struct DirectoryMetrics {
    seconds: Vec<Histogram>,
    errors: Vec<Counter>,
}

impl DirectoryMetrics {
    fn register(registry: &mut Registry) -> Self {
        let seconds: Family<OpLabel, Histogram> =
            Family::new_with_constructor(|| Histogram::new(DIRECTORY_OP_BUCKETS));
        registry.register(
            "directory_op_seconds",
            "Duration of fleet directory operations, failed ones included, by operation",
            seconds.clone(),
        );
        let errors: Family<OpLabel, Counter> = register(
            registry,
            "directory_errors",
            "Fleet directory operations that failed (store unavailable or timed out, or a corrupt value), by operation",
        );
        let label = |op: DirectoryOp| OpLabel { op: op.as_str() };
        DirectoryMetrics {
            seconds: DirectoryOp::ALL
                .iter()
                .map(|&op| seconds.get_or_create(&label(op)).clone())
                .collect(),
            errors: DirectoryOp::ALL
                .iter()
                .map(|&op| errors.get_or_create(&label(op)).clone())
                .collect(),
        }
    }

    /// Records one `op` that took `seconds`, and whether it failed.
    pub fn record(&self, op: DirectoryOp, seconds: f64, failed: bool) {
        if let Some(h) = self.seconds.get(op.index()) {
            h.observe(seconds);
        }
        if failed {
            if let Some(c) = self.errors.get(op.index()) {
                c.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_labelled_counters() {
        let m = Metrics::new();
        m.dropped(DropReason::TooLarge).inc();
        m.refused(ErrorCode::Full).inc_by(2);
        m.left(LeaveReason::TimedOut).inc();
        m.connections.set(3);
        m.limited.allocation_bytes.inc();
        m.direct_path(PathReason::Direct).inc();
        m.direct_path(PathReason::RelayFaster).inc_by(3);
        // Each operation's metrics sit at its position in `ALL`.
        for (i, op) in DirectoryOp::ALL.iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
        }
        m.directory.record(DirectoryOp::LookupCode, 0.002, true);
        m.directory.record(DirectoryOp::LookupCode, 0.003, false);
        let text = m.encode();
        // Whole lines: a substring check would let `... 10` pass for `... 1`.
        for line in [
            "baton_datagrams_dropped_total{reason=\"too_large\"} 1",
            "baton_requests_refused_total{reason=\"full\"} 2",
            "baton_members_left_total{reason=\"timed_out\"} 1",
            "baton_connections 3",
            "baton_rate_limited_total{limit=\"allocation_bytes\"} 1",
            "baton_rate_limited_total{limit=\"client_requests\"} 0",
            "baton_directory_errors_total{op=\"lookup_code\"} 1",
            "baton_directory_errors_total{op=\"heartbeat\"} 0",
            "baton_directory_op_seconds_count{op=\"lookup_code\"} 2",
            "baton_directory_op_seconds_count{op=\"nodes\"} 0",
            "baton_direct_paths_total{outcome=\"direct\",reason=\"direct\"} 1",
            "baton_direct_paths_total{outcome=\"relayed\",reason=\"relay_faster\"} 3",
            "baton_direct_paths_total{outcome=\"relayed\",reason=\"punch_timed_out\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
    }
}
