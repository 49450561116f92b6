//! Fleet mode's side of the driver: carries out the control plane's directory outputs against
//! the [`RedisDirectory`] and feeds the answers back as inputs, keeps this node's directory
//! entry alive, and mirrors its allocations and codes into the directory.
//!
//! - [`FleetLink::claim_codes`] wakes the claimer task, which claims fresh codes (retrying
//!   with backoff while the directory is down) and answers [`Input::CodesClaimed`] once it has
//!   some: an unanswered claim keeps the control plane from asking again, so claims never
//!   pile up.
//! - [`FleetLink::locate`] spawns one lookup; the control plane bounds how many are
//!   outstanding ([`crate::control::MAX_LOCATING`]).
//! - [`FleetLink::event`] turns lifecycle events into record writes (a code bound to its
//!   allocation, an allocation to this node; both released when the lineage closes), done in
//!   order by one writer task from a bounded queue. They are best-effort: every record has a
//!   time to live, so a write lost to an outage only means a record lives until it expires.
//! - The heartbeat task writes this node's entry every [`HEARTBEAT_INTERVAL`] with a time to
//!   live of [`HEARTBEAT_TTL`], and tells the control plane when the directory stops or starts
//!   answering ([`Input::DirectoryHealth`]).
//!
//! Runs on the caller's runtime, beside the control task; never on a lane.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use baton_protocol::{AllocationId, JoinCode};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::FleetConfig;
use crate::control::{
    AllocationRecord, CloseReason, Event, Input, Locate, Location, POOL_MAX_AGE, POOL_TARGET,
};
use crate::directory::{DirectoryError, NodeId, NodeInfo, NodeState, RedisDirectory};
use crate::metrics::Metrics;
use crate::{defaults, RelayConfig};

/// How often this node writes its directory entry.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long the entry lives without a heartbeat: a node silent this long is gone.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);
/// Record writes queued for the writer before new ones are dropped (and counted).
const RECORD_QUEUE: usize = 4096;
/// First and longest wait between failed code claims.
const CLAIM_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// One record write.
#[derive(Debug)]
enum Record {
    /// A new allocation holds `code`.
    Created {
        allocation: AllocationId,
        code: JoinCode,
    },
    /// `from` moved to its successor `to`, with the same code.
    Migrated {
        from: AllocationId,
        to: AllocationId,
    },
    /// The lineage whose latest allocation is `allocation` ended.
    Closed { allocation: AllocationId },
    /// The directory is back after an outage: write every live lineage's records again
    /// (it may have lost them).
    Republish,
    /// An allocation's takeover record changed.
    Put(Box<AllocationRecord>),
}

/// The driver's handle on fleet mode, kept in `Shared`.
#[derive(Debug)]
pub(super) struct FleetLink {
    directory: RedisDirectory,
    node: NodeId,
    inputs: mpsc::Sender<Input>,
    records: mpsc::Sender<Record>,
    claim: Arc<ClaimRequest>,
    metrics: Arc<Metrics>,
    /// Time to live of code and allocation records.
    record_ttl: Duration,
    /// Whether this node drains: its heartbeat then says `draining`, so no node sends it work.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Allocations this node handed to each node lately, which that node's heartbeat may not
    /// count yet: a drain spreads its allocations instead of sending all to one node.
    handed: Arc<std::sync::Mutex<Handed>>,
}

/// The one outstanding code claim, if any.
#[derive(Debug, Default)]
struct ClaimRequest {
    wanted: std::sync::Mutex<Option<(usize, usize)>>,
    notify: Notify,
}

/// Why fleet mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The node id is not a valid directory name.
    #[error("--node-id: {0}")]
    NodeId(String),
    /// The directory could not be reached or set up.
    #[error("the fleet directory: {0}")]
    Directory(#[from] DirectoryError),
}

impl FleetLink {
    /// Connects to the directory, registers this node, claims its first pool of codes
    /// (returned, for the control plane) and starts the claimer, writer and heartbeat tasks.
    /// `admin_addr` is where other nodes forward reservations placed here (published in the
    /// heartbeat; `None` without an admin server).
    /// Fails if the directory does not answer: a node that cannot register is no use to the
    /// fleet, and an orchestrator restarts it.
    pub(super) async fn start(
        config: &RelayConfig,
        fleet: &FleetConfig,
        admin_addr: Option<String>,
        inputs: mpsc::Sender<Input>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<(FleetLink, Vec<JoinCode>), FleetError> {
        let node = NodeId::parse(&fleet.node_id).map_err(|e| FleetError::NodeId(e.to_string()))?;
        let directory = RedisDirectory::connect(&fleet.directory, metrics.clone()).await?;
        let record_ttl = config.join_code_ttl() + defaults::CODE_TOMBSTONE_TTL;
        let claim_ttl = POOL_MAX_AGE + record_ttl;
        let info = node_info(fleet, &node, admin_addr);
        directory.heartbeat(&info, HEARTBEAT_TTL).await?;
        let mut rng = StdRng::from_entropy();
        let first = claim_once(
            &directory,
            &node,
            &mut rng,
            POOL_TARGET,
            config.join_code_len(),
            claim_ttl,
        )
        .await?;
        let (records, record_rx) = mpsc::channel(RECORD_QUEUE);
        let claim = Arc::new(ClaimRequest::default());
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));

        tasks.spawn(claimer(
            directory.clone(),
            node.clone(),
            claim.clone(),
            claim_ttl,
            inputs.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(writer(
            directory.clone(),
            node.clone(),
            record_rx,
            record_ttl,
            shutdown.clone(),
        ));
        tasks.spawn(heartbeat(
            directory.clone(),
            info,
            draining.clone(),
            inputs.clone(),
            records.clone(),
            metrics.clone(),
            shutdown,
        ));
        info!(node = %node, region = %fleet.region, "fleet mode: directory connected");
        let link = FleetLink {
            directory,
            node,
            inputs,
            records,
            claim,
            metrics,
            record_ttl,
            draining,
            handed: Arc::default(),
        };
        Ok((link, first))
    }

    /// [`Output::ClaimCodes`](crate::control::Output::ClaimCodes).
    pub(super) fn claim_codes(&self, count: usize, len: usize) {
        if let Ok(mut wanted) = self.claim.wanted.lock() {
            *wanted = Some((count, len));
        }
        self.claim.notify.notify_one();
    }

    /// [`Output::Locate`](crate::control::Output::Locate): looks `what` up on a task of its
    /// own and answers [`Input::Located`].
    pub(super) fn locate(&self, conn: u64, request_id: u32, what: Locate) {
        let directory = self.directory.clone();
        let node = self.node.clone();
        let inputs = self.inputs.clone();
        let ttl = self.record_ttl;
        tokio::spawn(async move {
            let location = match locate(&directory, &node, &what, ttl).await {
                Ok(location) => location,
                Err(e) => {
                    debug!(conn, cause = %e, "directory lookup failed");
                    Location::Unavailable
                }
            };
            let _ = inputs
                .send(Input::Located {
                    conn,
                    request_id,
                    location,
                })
                .await;
        });
    }

    /// This node's id.
    pub(super) fn node_id(&self) -> String {
        self.node.to_string()
    }

    /// The directory, for the admin API's placement of reservations (which reads the nodes).
    pub(super) fn directory(&self) -> &RedisDirectory {
        &self.directory
    }

    /// Marks this node draining in the directory from its next heartbeat on.
    pub(super) fn set_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// [`Output::Relocate`](crate::control::Output::Relocate): hands the allocation to the
    /// least-loaded active node, on a task of its own, and answers `RelocationReady` or
    /// `RelocationFailed`.
    pub(super) fn relocate(&self, record: AllocationRecord) {
        let directory = self.directory.clone();
        let node = self.node.clone();
        let inputs = self.inputs.clone();
        let ttl = self.record_ttl;
        let handed = self.handed.clone();
        tokio::spawn(async move {
            let allocation = AllocationId(record.allocation);
            let input = match hand_over(&directory, &node, &record, ttl, &handed).await {
                Ok(Some(target)) => Input::RelocationReady {
                    allocation,
                    address: target.addr,
                    server_name: target.server_name,
                    node: target.id.to_string(),
                },
                Ok(None) => {
                    debug!(%allocation, "no active node to relocate to; trying again");
                    Input::RelocationFailed { allocation }
                }
                Err(e) => {
                    debug!(%allocation, cause = %e, "relocation failed; trying again");
                    Input::RelocationFailed { allocation }
                }
            };
            let _ = inputs.send(input).await;
        });
    }

    /// [`Output::Publish`](crate::control::Output::Publish): stores the record, in order with
    /// the other writes.
    pub(super) fn publish(&self, record: AllocationRecord) {
        if self
            .records
            .try_send(Record::Put(Box::new(record)))
            .is_err()
        {
            self.metrics.directory_records_dropped.inc();
            warn!("directory record queue full; a takeover record is left stale");
        }
    }

    /// Mirrors a lifecycle event into the directory's records, if it changes one.
    pub(super) fn event(&self, event: &Event) {
        let record = match event {
            Event::AllocationCreated { allocation, code } => Record::Created {
                allocation: *allocation,
                code: *code,
            },
            Event::AllocationMigrated { from, to, .. } => Record::Migrated {
                from: *from,
                to: *to,
            },
            // A node stopping without a drain leaves its allocations' records in place: their
            // members rejoin through other nodes, and the first one reached takes each over.
            Event::AllocationClosed {
                reason: CloseReason::Shutdown,
                ..
            } => return,
            Event::AllocationClosed { allocation, .. } => Record::Closed {
                allocation: *allocation,
            },
            _ => return,
        };
        if self.records.try_send(record).is_err() {
            self.metrics.directory_records_dropped.inc();
            warn!("directory record queue full; a record is left to expire");
        }
    }
}

/// The node `what` lives on, as a [`Location`]; or, when the node holding it is gone (or is
/// this node after a restart), the takeover: this node claims it in the directory (one winner
/// among racing nodes) and answers with its record to adopt.
async fn locate(
    directory: &RedisDirectory,
    me: &NodeId,
    what: &Locate,
    ttl: Duration,
) -> Result<Location, DirectoryError> {
    let (owner, allocation) = match what {
        Locate::Code(code) => match directory.lookup_code(&code.to_string()).await? {
            Some(record) => (record.node, record.allocation),
            None => return Ok(Location::Nowhere),
        },
        Locate::Allocation(id) => match directory.lookup_allocation(id.0).await? {
            Some(node) => (node, Some(id.0)),
            None => return Ok(Location::Nowhere),
        },
    };
    if &owner != me {
        // A draining node still serves the allocations it holds.
        if let Some(info) = directory.node(&owner).await? {
            return Ok(Location::Node {
                address: info.addr,
                server_name: info.server_name,
            });
        }
    }
    // Its node is gone (its heartbeat lapsed), or it is this node, which no longer holds it
    // (a restart): take it over, if there is a record to resume from.
    let Some(allocation) = allocation else {
        return Ok(Location::Nowhere);
    };
    let Some(raw) = directory.get_record(allocation).await? else {
        return Ok(Location::Nowhere);
    };
    let record: AllocationRecord = match serde_json::from_slice(&raw) {
        Ok(record) => record,
        Err(e) => {
            warn!(cause = %e, "an allocation record in the directory does not parse");
            return Ok(Location::Nowhere);
        }
    };
    // Found under an earlier id of its chain: the game lives on as the record's allocation,
    // which may be held elsewhere.
    let (owner, allocation) = if record.allocation == allocation {
        (owner, allocation)
    } else {
        let Some(holder) = directory.lookup_allocation(record.allocation).await? else {
            return Ok(Location::Nowhere);
        };
        if &holder != me {
            if let Some(info) = directory.node(&holder).await? {
                return Ok(Location::Node {
                    address: info.addr,
                    server_name: info.server_name,
                });
            }
        }
        (holder, record.allocation)
    };
    if &owner != me
        && !directory
            .take_allocation(allocation, &owner, me, ttl)
            .await?
    {
        // Another node won the race: it serves the allocation now. Or this node did, for
        // another member's lookup a moment ago: the control plane adopts the record once
        // (whichever answer comes first) and serves this request from it.
        return match directory.lookup_allocation(allocation).await? {
            Some(winner) if &winner == me => Ok(Location::Adopt(Box::new(record))),
            Some(winner) => match directory.node(&winner).await? {
                Some(info) => Ok(Location::Node {
                    address: info.addr,
                    server_name: info.server_name,
                }),
                None => Ok(Location::Nowhere),
            },
            None => Ok(Location::Nowhere),
        };
    }
    // The code follows (only if the lost node still holds it), then every allocation id of
    // the lineage the record names.
    directory
        .take_code(&record.code, &owner, me, record.allocation, ttl)
        .await?;
    bind_earlier_ids(directory, &record, me, ttl).await?;
    info!(allocation = %AllocationId(allocation), from = %owner, "taking an allocation over");
    Ok(Location::Adopt(Box::new(record)))
}

/// Stores `record` (serialized as `json`) under its allocation's id and every earlier id of its
/// chain, so a member rejoining by an id from before a migration finds the latest record (and
/// no stale one is left to revive).
async fn put_record_everywhere(
    directory: &RedisDirectory,
    record: &AllocationRecord,
    json: &[u8],
    ttl: Duration,
) -> Result<(), DirectoryError> {
    directory.put_record(record.allocation, json, ttl).await?;
    for earlier in std::iter::once(record.lineage).chain(record.ancestors.iter().copied()) {
        if earlier != record.allocation {
            directory.put_record(earlier, json, ttl).await?;
        }
    }
    Ok(())
}

/// Points the record's earlier ids (its lineage and ancestors, which members who missed
/// migrations rejoin by) at `node`.
async fn bind_earlier_ids(
    directory: &RedisDirectory,
    record: &AllocationRecord,
    node: &NodeId,
    ttl: Duration,
) -> Result<(), DirectoryError> {
    for earlier in std::iter::once(record.lineage).chain(record.ancestors.iter().copied()) {
        if earlier != record.allocation {
            directory.bind_allocation(earlier, node, ttl).await?;
        }
    }
    Ok(())
}

/// How long a hand-over counts towards its target's load: until two heartbeats have carried it.
const HANDED_WINDOW: Duration = Duration::from_secs(2);

/// How long a hand-over waits for this node's own directory entry of the allocation (written
/// by the record writer just after the allocation was created), checking every
/// [`BOUND_POLL`].
const BOUND_WAIT: Duration = Duration::from_millis(500);
const BOUND_POLL: Duration = Duration::from_millis(25);

/// Allocations handed to each node within [`HANDED_WINDOW`]: per node, how many and since when.
#[derive(Debug, Default)]
struct Handed(HashMap<NodeId, (u64, tokio::time::Instant)>);

impl Handed {
    /// Allocations handed to `node` lately.
    fn recent(&self, node: &NodeId, now: tokio::time::Instant) -> u64 {
        match self.0.get(node) {
            Some((n, since)) if now.duration_since(*since) < HANDED_WINDOW => *n,
            _ => 0,
        }
    }

    /// One more allocation handed to `node`. Entries older than the window are dropped, so
    /// the map holds at most the nodes handed to lately.
    fn add(&mut self, node: &NodeId, now: tokio::time::Instant) {
        self.0
            .retain(|_, (_, since)| now.duration_since(*since) < HANDED_WINDOW);
        let entry = self.0.entry(node.clone()).or_insert((0, now));
        entry.0 += 1;
    }
}

/// Picks the least-loaded active node other than `me` ([`NodeInfo::cmp_load`], counting the
/// allocations handed to it lately)
/// and moves `record`'s allocation to it in the directory: the record first, then the
/// allocation and its code (compare-and-set, from this node), so the target finds everything
/// when the first member rejoins there. `None` when there is no other active node.
async fn hand_over(
    directory: &RedisDirectory,
    me: &NodeId,
    record: &AllocationRecord,
    ttl: Duration,
    handed: &std::sync::Mutex<Handed>,
) -> Result<Option<NodeInfo>, DirectoryError> {
    let now = tokio::time::Instant::now();
    let nodes = directory.nodes().await?;
    let target = {
        // Chosen and counted under one lock: hand-overs running at once spread out.
        let mut recent = handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let target = nodes
            .into_iter()
            .filter(|n| &n.id != me && n.state == NodeState::Active)
            .map(|mut n| {
                n.allocations += recent.recent(&n.id, now);
                n
            })
            .min_by(NodeInfo::cmp_load);
        if let Some(target) = &target {
            recent.add(&target.id, now);
        }
        target
    };
    let Some(target) = target else {
        debug!(allocation = %AllocationId(record.allocation), "no active node to hand over to");
        return Ok(None);
    };
    // An allocation created a moment ago may not be in the directory yet.
    let deadline = now + BOUND_WAIT;
    while directory
        .lookup_allocation(record.allocation)
        .await?
        .as_ref()
        != Some(me)
    {
        if tokio::time::Instant::now() >= deadline {
            debug!(
                allocation = %AllocationId(record.allocation),
                "the directory does not say this node holds the allocation"
            );
            return Ok(None);
        }
        tokio::time::sleep(BOUND_POLL).await;
    }
    let json =
        serde_json::to_vec(record).map_err(|e| DirectoryError::Invalid(format!("record: {e}")))?;
    directory.put_record(record.allocation, &json, ttl).await?;
    if !directory
        .take_allocation(record.allocation, me, &target.id, ttl)
        .await?
    {
        // Not this node's any more (it was taken over meanwhile): nothing to hand over.
        return Ok(None);
    }
    directory
        .take_code(&record.code, me, &target.id, record.allocation, ttl)
        .await?;
    bind_earlier_ids(directory, record, &target.id, ttl).await?;
    info!(
        allocation = %AllocationId(record.allocation),
        to = %target.id,
        "allocation handed over"
    );
    Ok(Some(target))
}

/// This node's directory entry, without its load (the heartbeat fills that in).
fn node_info(fleet: &FleetConfig, node: &NodeId, admin_addr: Option<String>) -> NodeInfo {
    NodeInfo {
        id: node.clone(),
        addr: fleet.public_addr,
        server_name: fleet.server_name.clone(),
        region: fleet.region.clone(),
        state: NodeState::Active,
        allocations: 0,
        connections: 0,
        cpu_pct: 0.0,
        admin_addr,
    }
}

/// Claims codes whenever asked, until it has some to answer with.
async fn claimer(
    directory: RedisDirectory,
    node: NodeId,
    request: Arc<ClaimRequest>,
    ttl: Duration,
    inputs: mpsc::Sender<Input>,
    shutdown: CancellationToken,
) {
    let mut rng = StdRng::from_entropy();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = request.notify.notified() => {}
        }
        let Some((count, len)) = request.wanted.lock().ok().and_then(|mut w| w.take()) else {
            continue;
        };
        let mut backoff = CLAIM_BACKOFF.0;
        let codes = loop {
            let candidates: Vec<JoinCode> = (0..count)
                .map(|_| JoinCode::random(&mut rng, len))
                .collect();
            let texts: Vec<String> = candidates.iter().map(ToString::to_string).collect();
            match directory.claim_codes(&node, &texts, ttl).await {
                Ok(won) if !won.is_empty() => {
                    break candidates
                        .into_iter()
                        .filter(|c| won.contains(&c.to_string()))
                        .collect::<Vec<_>>();
                }
                Ok(_) => debug!("no code claimed this round; drawing again"),
                Err(e) => debug!(cause = %e, "claiming codes failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(CLAIM_BACKOFF.1);
        };
        if inputs.send(Input::CodesClaimed { codes }).await.is_err() {
            return;
        }
    }
}

/// Draws `count` random codes of `len` characters and claims them for `node`; the ones won.
async fn claim_once(
    directory: &RedisDirectory,
    node: &NodeId,
    rng: &mut StdRng,
    count: usize,
    len: usize,
    ttl: Duration,
) -> Result<Vec<JoinCode>, DirectoryError> {
    let candidates: Vec<JoinCode> = (0..count).map(|_| JoinCode::random(rng, len)).collect();
    let texts: Vec<String> = candidates.iter().map(ToString::to_string).collect();
    let won = directory.claim_codes(node, &texts, ttl).await?;
    Ok(candidates
        .into_iter()
        .filter(|c| won.contains(&c.to_string()))
        .collect())
}

/// Writes records in order, one at a time.
async fn writer(
    directory: RedisDirectory,
    node: NodeId,
    mut records: mpsc::Receiver<Record>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    // Each live lineage's code and allocation ids, to release them when it closes.
    let mut lineages: HashMap<AllocationId, (JoinCode, Vec<AllocationId>)> = HashMap::new();
    loop {
        let record = tokio::select! {
            _ = shutdown.cancelled() => return,
            record = records.recv() => match record {
                Some(record) => record,
                None => return,
            },
        };
        let result = match record {
            Record::Created { allocation, code } => {
                lineages.insert(allocation, (code, vec![allocation]));
                write_binding(&directory, &node, code, allocation, ttl).await
            }
            Record::Migrated { from, to } => match lineages.remove(&from) {
                Some((code, mut ids)) => {
                    ids.push(to);
                    lineages.insert(to, (code, ids));
                    // The successor's record, written next, replaces the predecessor's (a
                    // record is stored under every id of its chain).
                    write_binding(&directory, &node, code, to, ttl).await
                }
                None => Ok(()),
            },
            Record::Closed { allocation } => match lineages.remove(&allocation) {
                Some((code, ids)) => release(&directory, &node, code, &ids).await,
                None => Ok(()),
            },
            Record::Republish => republish(&directory, &node, &lineages, ttl).await,
            Record::Put(record) => {
                let id = AllocationId(record.allocation);
                // The first record of an allocation this node did not create: a migration's
                // successor (its `Migrated` comes next), or one taken over from a lost node
                // or handed over by a draining one. Its ids are released here when it closes,
                // and it is bound to this node before its record is stored under its earlier
                // ids, so a node reading the record always finds where it lives.
                let mut bound = Ok(());
                if let (std::collections::hash_map::Entry::Vacant(entry), Ok(code)) =
                    (lineages.entry(id), record.code.parse::<JoinCode>())
                {
                    let mut ids: Vec<AllocationId> = std::iter::once(record.lineage)
                        .chain(record.ancestors.iter().copied())
                        .filter(|earlier| *earlier != record.allocation)
                        .map(AllocationId)
                        .collect();
                    ids.push(id);
                    entry.insert((code, ids));
                    bound = write_binding(&directory, &node, code, id, ttl).await;
                }
                match (bound, serde_json::to_vec(&record)) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Ok(json)) => {
                        put_record_everywhere(&directory, &record, &json, ttl).await
                    }
                    (Ok(()), Err(e)) => {
                        warn!(cause = %e, "an allocation record did not serialize");
                        Ok(())
                    }
                }
            }
        };
        if let Err(e) = result {
            debug!(cause = %e, "directory record write failed; it is left to expire");
        }
    }
}

/// Points `code` and `allocation` at this node.
async fn write_binding(
    directory: &RedisDirectory,
    node: &NodeId,
    code: JoinCode,
    allocation: AllocationId,
    ttl: Duration,
) -> Result<(), DirectoryError> {
    directory
        .bind_code(&code.to_string(), node, allocation.0, ttl)
        .await?;
    directory.bind_allocation(allocation.0, node, ttl).await?;
    Ok(())
}

/// Writes every live lineage's records again: its code claimed for this node if no one holds
/// it, then bound to its latest allocation, and every allocation id of it pointed here.
async fn republish(
    directory: &RedisDirectory,
    node: &NodeId,
    lineages: &HashMap<AllocationId, (JoinCode, Vec<AllocationId>)>,
    ttl: Duration,
) -> Result<(), DirectoryError> {
    let mut conflicts = 0;
    for (latest, (code, ids)) in lineages {
        let text = code.to_string();
        // Won, or already ours (then binding refreshes it); another node's otherwise.
        directory
            .claim_codes(node, std::slice::from_ref(&text), ttl)
            .await?;
        if !directory.bind_code(&text, node, latest.0, ttl).await? {
            // Another node holds it (it claimed it during the outage, or this allocation
            // was handed over): its records are not this node's to write.
            conflicts += 1;
            continue;
        }
        for id in ids {
            directory.bind_allocation(id.0, node, ttl).await?;
        }
    }
    if conflicts > 0 {
        warn!(
            conflicts,
            "codes of live allocations were claimed by other nodes during a directory outage"
        );
    }
    info!(lineages = lineages.len(), "records published again");
    Ok(())
}

/// Releases a closed lineage's code and allocation records (only those still this node's).
async fn release(
    directory: &RedisDirectory,
    node: &NodeId,
    code: JoinCode,
    ids: &[AllocationId],
) -> Result<(), DirectoryError> {
    directory.release_code(&code.to_string(), node).await?;
    for id in ids {
        // Only this node's: a relocated allocation's records are its new node's now.
        if directory.release_allocation(id.0, node).await? {
            directory.delete_record(id.0).await?;
        }
    }
    Ok(())
}

/// Keeps this node's entry alive and tells the control plane whether the directory answers.
async fn heartbeat(
    directory: RedisDirectory,
    mut info: NodeInfo,
    draining: Arc<std::sync::atomic::AtomicBool>,
    inputs: mpsc::Sender<Input>,
    records: mpsc::Sender<Record>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut reachable = true;
    let mut cpu = CpuMeter::start();
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        info.allocations = u64::try_from(metrics.allocations.get()).unwrap_or(0);
        info.connections = u64::try_from(metrics.connections.get()).unwrap_or(0);
        info.cpu_pct = cpu.sample();
        info.state = if draining.load(std::sync::atomic::Ordering::Relaxed) {
            NodeState::Draining
        } else {
            NodeState::Active
        };
        let ok = match directory.heartbeat(&info, HEARTBEAT_TTL).await {
            Ok(()) => true,
            Err(e) => {
                debug!(cause = %e, "heartbeat failed");
                false
            }
        };
        if ok != reachable {
            reachable = ok;
            if ok {
                info!("fleet directory reachable again");
                if records.try_send(Record::Republish).is_err() {
                    metrics.directory_records_dropped.inc();
                }
            } else {
                warn!(
                    "fleet directory unreachable: new allocations and cross-node joins are refused"
                );
            }
            if inputs
                .send(Input::DirectoryHealth { reachable: ok })
                .await
                .is_err()
            {
                break;
            }
        }
    }
    // A clean stop: leave the directory at once rather than after the TTL.
    let _ = directory.remove_node(&info.id).await;
}

/// This process's CPU use between samples, percent of one core (Linux `/proc/self/stat`; 0
/// elsewhere).
struct CpuMeter {
    last: Option<(std::time::Instant, f64)>,
}

impl CpuMeter {
    fn start() -> Self {
        CpuMeter {
            last: cpu_seconds().map(|s| (std::time::Instant::now(), s)),
        }
    }

    fn sample(&mut self) -> f32 {
        let now = std::time::Instant::now();
        let Some(seconds) = cpu_seconds() else {
            return 0.0;
        };
        let pct = match self.last {
            Some((at, before)) => {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    (100.0 * (seconds - before) / wall) as f32
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, seconds));
        pct
    }
}

/// User plus system CPU seconds of this process.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after its closing ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    #[test]
    fn recent_hand_overs_count_until_heartbeats_carry_them() {
        let t0 = tokio::time::Instant::now();
        let mut handed = Handed::default();
        handed.add(&id("b"), t0);
        handed.add(&id("b"), t0 + Duration::from_millis(10));
        handed.add(&id("c"), t0);
        assert_eq!(handed.recent(&id("b"), t0 + Duration::from_millis(20)), 2);
        assert_eq!(handed.recent(&id("c"), t0), 1);
        assert_eq!(handed.recent(&id("d"), t0), 0);
        // Two heartbeats later the directory's load includes them: they count no more, and a
        // new hand-over forgets them.
        let later = t0 + HANDED_WINDOW;
        assert_eq!(handed.recent(&id("b"), later), 0);
        handed.add(&id("d"), later);
        assert_eq!(handed.0.len(), 1);
        assert_eq!(handed.recent(&id("d"), later), 1);
    }
}
