//! Where the control plane's lifecycle events go: [`record`] logs and counts each one in the
//! metrics, and [`EventSink`] turns it into a hooks event (`hooks::LobbyEventKind`, what
//! webhooks and the admin event stream carry) and publishes it.
//!
//! Runs on the control task; publishing never blocks it (see [`crate::hooks`]).

use std::collections::HashMap;

use baton_protocol::{AllocationId, JoinCode};
use tracing::{debug, info};

use crate::control::{Event, JoinedVia};
use crate::hooks::HookSender;
use crate::metrics::Metrics;

/// Turns the control plane's lifecycle events into hooks events and publishes them,
/// remembering each allocation's join code (hooks events carry it; the control plane's events
/// name only the allocation).
pub(super) struct EventSink {
    hooks: HookSender,
    codes: HashMap<AllocationId, JoinCode>,
    /// This fleet node's id (`allocation.relocated` names it as `from_node`).
    node: Option<String>,
}

impl EventSink {
    /// A sink publishing to `hooks`.
    pub(super) fn new(hooks: HookSender, node: Option<String>) -> Self {
        EventSink {
            hooks,
            codes: HashMap::new(),
            node,
        }
    }

    /// Publishes `event` to the hooks, with its allocation's join code.
    pub(super) fn publish(&mut self, event: Event) {
        use crate::hooks::LobbyEventKind as Kind;
        let (allocation, kind) = match event {
            Event::AllocationCreated { allocation, code } => {
                self.codes.insert(allocation, code);
                (allocation, Kind::AllocationCreated {})
            }
            Event::PeerJoined {
                allocation,
                peer,
                subject,
                ..
            } => (
                allocation,
                Kind::PeerJoined {
                    peer: peer.0,
                    subject: subject.as_deref().map(str::to_owned),
                },
            ),
            Event::PeerLeft {
                allocation,
                peer,
                reason,
            } => (
                allocation,
                Kind::PeerLeft {
                    peer: peer.0,
                    reason: reason.as_str().to_owned(),
                },
            ),
            Event::HostDisconnected {
                allocation,
                host,
                reason,
            } => (
                allocation,
                Kind::HostDisconnected {
                    host: host.0,
                    reason: reason.as_str().to_owned(),
                },
            ),
            Event::HostElected {
                allocation,
                host,
                by,
            } => (
                allocation,
                Kind::HostElected {
                    host: host.0,
                    by: by.as_str().to_owned(),
                },
            ),
            Event::AllocationMigrated { from, to, host } => {
                if let Some(code) = self.codes.remove(&from) {
                    self.codes.insert(to, code);
                }
                (
                    to,
                    Kind::AllocationMigrated {
                        from: from.to_string(),
                        to: to.to_string(),
                        host: host.0,
                    },
                )
            }
            Event::AllocationRelocated {
                allocation,
                to_node,
            } => (
                allocation,
                Kind::AllocationRelocated {
                    from_node: self.node.clone().unwrap_or_default(),
                    to_node,
                },
            ),
            Event::AllocationAdopted { allocation, code } => {
                // Taken over from a lost node: its events carry its code from now on.
                self.codes.insert(allocation, code);
                return;
            }
            Event::AllocationClosed { allocation, reason } => {
                let kind = Kind::AllocationClosed {
                    reason: reason.as_str().to_owned(),
                };
                if let Some(code) = self.codes.remove(&allocation) {
                    self.hooks.publish(kind, allocation, code);
                }
                return;
            }
            Event::Refused { .. }
            | Event::CredentialRefused { .. }
            | Event::PathReported { .. } => return,
        };
        if let Some(code) = self.codes.get(&allocation) {
            self.hooks.publish(kind, allocation, *code);
        }
    }
}

/// Logs a lifecycle event and counts it.
pub(super) fn record(event: &Event, metrics: &Metrics) {
    match event {
        Event::AllocationCreated { allocation, code } => {
            metrics.allocations_created.inc();
            info!(%allocation, %code, "allocation created");
        }
        Event::PeerJoined {
            allocation,
            peer,
            via,
            subject,
        } => {
            match via {
                JoinedVia::Code => {
                    metrics.joins.inc();
                }
                JoinedVia::Rejoin => {
                    metrics.rejoins.inc();
                }
                JoinedVia::Host => {}
            }
            // A subject is 1-64 printable characters (SPEC section 16.1): safe to log as is.
            match subject {
                Some(subject) => info!(%allocation, %peer, ?via, %subject, "peer joined"),
                None => info!(%allocation, %peer, ?via, "peer joined"),
            }
        }
        Event::PeerLeft {
            allocation,
            peer,
            reason,
        } => {
            metrics.left(*reason).inc();
            info!(%allocation, %peer, %reason, "peer left");
        }
        Event::HostDisconnected {
            allocation,
            host,
            reason,
        } => {
            info!(%allocation, %host, %reason, "host disconnected");
        }
        Event::HostElected {
            allocation,
            host,
            by,
        } => {
            info!(%allocation, %host, by = by.as_str(), "host elected");
        }
        Event::AllocationMigrated { from, to, host } => {
            info!(%from, %to, %host, "allocation migrated");
        }
        Event::AllocationRelocated {
            allocation,
            to_node,
        } => {
            info!(%allocation, %to_node, "allocation relocated");
        }
        Event::AllocationAdopted { allocation, code } => {
            info!(%allocation, %code, "allocation taken over");
        }
        Event::AllocationClosed { allocation, reason } => {
            info!(%allocation, reason = reason.as_str(), "allocation closed");
        }
        Event::CredentialRefused { reason } => {
            metrics.credential_refused(*reason).inc();
            debug!(reason = reason.as_str(), "credential refused");
        }
        Event::PathReported {
            allocation,
            peer,
            to,
            reason,
        } => {
            metrics.direct_path(*reason).inc();
            debug!(%allocation, %peer, %to, outcome = %reason.outcome(), %reason, "path reported");
        }
        Event::Refused { code } => {
            metrics.refused(*code).inc();
            debug!(%code, "request refused");
        }
    }
}
