//! The fleet directory: what the relay nodes of one fleet share through Redis or Valkey.
//!
//! A node publishes its record with [`RedisDirectory::heartbeat`] (address, TLS name, region,
//! state and load, with a TTL, so a dead node disappears on its own); join codes are unique
//! fleet-wide because a node wins a code only by creating its key (`SET NX PX`); allocation
//! records say which node holds an allocation, so a rejoin that lands elsewhere is redirected.
//! Ownership is checked in the store (a Lua compare-and-set), never read-then-written by the
//! client, so two nodes racing on one key cannot both win.
//!
//! ## Key layout
//! Every key starts with `baton:`; a fleet gets a Redis database of its own (the number in the
//! URL's path, `redis://host:6379/3`).
//! - `baton:nodes`: set of node ids that heartbeat (ids whose record expired are pruned by
//!   [`RedisDirectory::nodes`]).
//! - `baton:node:{id}`: hash, the node's [`NodeInfo`] (fields `addr`, `server_name`, `region`,
//!   `state`, `allocations`, `connections`, `cpu_pct`, `admin_addr`), with the heartbeat's TTL.
//!   `admin_addr` is empty for a node without an admin server and missing in records written
//!   before nodes published it; both read as `None`.
//! - `baton:code:{code}`: string `{node}` once claimed, `{node} {allocation}` once bound
//!   (allocation as 16 lower-case hex digits), with the code's TTL.
//! - `baton:alloc:{allocation}`: string `{node}`, the node holding the allocation.
//! - `baton:record:{allocation}`: string, the allocation's takeover record (JSON,
//!   `control::AllocationRecord`), rewritten by its node after every membership change.
//!
//! ## Bounds
//! Every operation gives up after [`OP_TIMEOUT`] and reports
//! [`DirectoryError::Unavailable`], so a dead or stalled store never holds a caller longer
//! than that; connection losses are repaired in the background (the client reconnects with
//! backoff) and the next operation uses the new connection. [`RedisDirectory::nodes`] reads at
//! most [`MAX_NODES`] ids; every value read is length-checked and parsed strictly
//! ([`DirectoryError::Corrupt`] names the key otherwise).
//!
//! ## Client
//! The `redis` crate: maintained with Valkey in mind, async on tokio, and its
//! `ConnectionManager` multiplexes one connection for every clone of [`RedisDirectory`] and
//! reconnects on its own. `rediss://` runs TLS on rustls (ring, the relay's provider, with the
//! system's roots, so a private CA installed on the machine works), the password and database
//! come from the URL, pipelines and `MULTI` batch the multi-key writes, and its `Script` runs
//! the compare-and-set scripts by digest. Only those features are enabled.

mod error;
mod record;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};

pub use error::DirectoryError;
pub use record::{
    check_admin_addr, check_code, check_region, CodeRecord, NameError, NodeId, NodeInfo, NodeState,
    MAX_ADMIN_ADDR_LEN, MAX_CODE_LEN, MAX_NODE_ID_LEN, MAX_REGION_LEN, MAX_SERVER_NAME_LEN,
    MAX_VALUE_LEN,
};

use crate::control::MAX_RECORD_BYTES;
use crate::metrics::{DirectoryMetrics, DirectoryOp, Metrics};
use record::{allocation_hex, parse_node_value, NODE_FIELDS};

/// How long any one operation may take, connection repair included, before it fails with
/// [`DirectoryError::Unavailable`]. A same-region store answers in about a millisecond; 500 ms
/// absorbs a failover or a slow moment without holding a joining player noticeably longer.
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// How long [`RedisDirectory::connect`] may take: DNS, TCP, TLS, `AUTH` and `SELECT`, and a
/// few retries, at start-up when nothing waits on it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Most node ids [`RedisDirectory::nodes`] reads in one call. A fleet larger than this sees a
/// random subset of this size each call.
pub const MAX_NODES: usize = 1024;

/// Most codes one [`RedisDirectory::claim_codes`] call may try.
pub const MAX_CODES_PER_CLAIM: usize = 256;

/// Longest TTL any record may be given (30 days).
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Reconnection attempts after the connection is lost, before the next operation starts a
/// new series (each attempt bounded by [`OP_TIMEOUT`], with exponential backoff from 50 ms).
const RECONNECT_RETRIES: usize = 3;

/// The set of node ids.
const NODES_KEY: &str = "baton:nodes";

fn node_key(id: &NodeId) -> String {
    format!("baton:node:{id}")
}

fn code_key(code: &str) -> String {
    format!("baton:code:{code}")
}

fn record_key(allocation: u64) -> String {
    format!("baton:record:{}", allocation_hex(allocation))
}

fn alloc_key(allocation: u64) -> String {
    format!("baton:alloc:{}", allocation_hex(allocation))
}

/// Sets a code's value and TTL if the code is held by `ARGV[1]` (alone or with an
/// allocation). Returns 1 if it did.
const BIND_CODE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and (v == ARGV[1] or string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Deletes a code if it is held by `ARGV[1]` (alone or with an allocation). Returns 1 if it
/// did.
const RELEASE_CODE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and (v == ARGV[1] or string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Moves a key whose value is exactly `ARGV[1]` to `ARGV[2]` for `ARGV[3]` ms. Returns 1 if
/// it did (one winner when nodes race for a lost node's allocation).
const TAKE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Moves a code held by `ARGV[1]` (alone or with an allocation) to the value `ARGV[2]` for
/// `ARGV[3]` ms. Returns 1 if it did.
const TAKE_CODE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and (v == ARGV[1] or string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Deletes a key whose value is exactly `ARGV[1]`. Returns 1 if it did.
const DELETE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Removes from the set `KEYS[#KEYS]` each id `ARGV[i]` whose record `KEYS[i]` does not exist
/// (checked here, so a node that heartbeats meanwhile is not dropped). Returns how many.
const PRUNE_NODES: &str = r"
local set = KEYS[#KEYS]
local n = 0
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    n = n + redis.call('SREM', set, id)
  end
end
return n
";

/// The compare-and-set scripts, hashed once.
struct Scripts {
    bind_code: Script,
    release_code: Script,
    delete_if_equal: Script,
    prune_nodes: Script,
    take_if_equal: Script,
    take_code: Script,
}

/// A client of the fleet directory. Cheap to clone: clones share one multiplexed connection
/// (repaired in the background when lost), the scripts and the metrics.
#[derive(Clone)]
pub struct RedisDirectory {
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: nothing of it is kept or printed.
        f.debug_struct("RedisDirectory").finish_non_exhaustive()
    }
}

/// Runs `fut` for at most `limit`, records it in `metrics` under `op`, and logs a failure.
async fn timed<T>(
    metrics: &DirectoryMetrics,
    op: DirectoryOp,
    limit: Duration,
    fut: impl Future<Output = Result<T, DirectoryError>>,
) -> Result<T, DirectoryError> {
    let start = Instant::now();
    let result = match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_elapsed) => Err(DirectoryError::Unavailable(format!(
            "no answer within {} ms",
            limit.as_millis()
        ))),
    };
    metrics.record(op, start.elapsed().as_secs_f64(), result.is_err());
    if let Err(e) = &result {
        tracing::debug!(op = op.as_str(), cause = %e, "directory operation failed");
    }
    result
}

/// Maps a store error on `key`: a value of the wrong type or shape is corrupt, anything else
/// (connection, timeout, server refusal) leaves the directory unavailable.
fn store_error(key: &str, e: RedisError) -> DirectoryError {
    let wrong_shape = e.code() == Some("WRONGTYPE")
        || matches!(
            e.kind(),
            redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse
        );
    if wrong_shape {
        DirectoryError::Corrupt {
            key: key.to_owned(),
            detail: e.to_string(),
        }
    } else {
        DirectoryError::Unavailable(e.to_string())
    }
}

fn corrupt(key: &str, detail: impl Into<String>) -> DirectoryError {
    DirectoryError::Corrupt {
        key: key.to_owned(),
        detail: detail.into(),
    }
}

/// A TTL in whole milliseconds, refusing zero and anything over [`MAX_TTL`].
fn ttl_ms(ttl: Duration) -> Result<u64, DirectoryError> {
    let ms = ttl.as_millis();
    if ms == 0 || ttl > MAX_TTL {
        return Err(DirectoryError::Invalid(format!(
            "TTL {ttl:?} is not between 1 ms and {MAX_TTL:?}"
        )));
    }
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Refuses a URL that is neither `redis://` nor `rediss://` (the URL itself is never echoed:
/// it may hold a password).
fn check_scheme(url: &str) -> Result<(), DirectoryError> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(())
    } else {
        Err(DirectoryError::InvalidUrl(
            "the scheme must be redis:// or rediss://".into(),
        ))
    }
}

fn valid_code(code: &str) -> Result<(), DirectoryError> {
    check_code(code).map_err(|e| DirectoryError::Invalid(format!("join code: {e}")))
}

/// A script's integer answer as a boolean (1 = done).
fn done(key: &str, v: Value) -> Result<bool, DirectoryError> {
    match v {
        Value::Int(0) => Ok(false),
        Value::Int(1) => Ok(true),
        other => Err(corrupt(key, format!("unexpected script answer {other:?}"))),
    }
}

/// A string value: `None` if the key does not exist.
fn bytes_or_nil(key: &str, v: Value) -> Result<Option<Vec<u8>>, DirectoryError> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        Value::SimpleString(s) => Ok(Some(s.into_bytes())),
        other => Err(corrupt(key, format!("unexpected answer {other:?}"))),
    }
}

impl RedisDirectory {
    /// Connects to the store at `url` (`redis://[:password@]host[:port][/db]` or `rediss://`
    /// for TLS, verified against the system's roots; a username may precede the password),
    /// within [`CONNECT_TIMEOUT`]. Every operation is recorded in `metrics.directory`.
    pub async fn connect(url: &str, metrics: Arc<Metrics>) -> Result<Self, DirectoryError> {
        check_scheme(url)?;
        let client =
            redis::Client::open(url).map_err(|e| DirectoryError::InvalidUrl(e.to_string()))?;
        Self::connect_client(client, metrics).await
    }

    /// Like [`Self::connect`] for a `rediss://` URL whose server certificate is verified
    /// against the certificates in `ca_pem` (PEM) alone, not the system's roots: a store with
    /// a private CA.
    pub async fn connect_with_ca(
        url: &str,
        ca_pem: &[u8],
        metrics: Arc<Metrics>,
    ) -> Result<Self, DirectoryError> {
        check_scheme(url)?;
        if !url.starts_with("rediss://") {
            return Err(DirectoryError::InvalidUrl(
                "a CA is given, so the scheme must be rediss://".into(),
            ));
        }
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem.to_vec()),
        };
        let client = redis::Client::build_with_tls(url, certs)
            .map_err(|e| DirectoryError::InvalidUrl(e.to_string()))?;
        Self::connect_client(client, metrics).await
    }

    /// Opens `client`'s managed connection within [`CONNECT_TIMEOUT`].
    async fn connect_client(
        client: redis::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DirectoryError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = timed(
            &metrics.directory,
            DirectoryOp::Connect,
            CONNECT_TIMEOUT,
            async {
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|e| match e.kind() {
                        redis::ErrorKind::InvalidClientConfig => {
                            DirectoryError::InvalidUrl(e.to_string())
                        }
                        _ => DirectoryError::Unavailable(e.to_string()),
                    })
            },
        )
        .await?;
        Ok(RedisDirectory {
            conn,
            scripts: Arc::new(Scripts {
                bind_code: Script::new(BIND_CODE),
                release_code: Script::new(RELEASE_CODE),
                delete_if_equal: Script::new(DELETE_IF_EQUAL),
                prune_nodes: Script::new(PRUNE_NODES),
                take_if_equal: Script::new(TAKE_IF_EQUAL),
                take_code: Script::new(TAKE_CODE),
            }),
            metrics,
        })
    }

    /// Runs one operation within [`OP_TIMEOUT`], recorded under `op`.
    async fn run<T>(
        &self,
        op: DirectoryOp,
        fut: impl Future<Output = Result<T, DirectoryError>>,
    ) -> Result<T, DirectoryError> {
        timed(&self.metrics.directory, op, OP_TIMEOUT, fut).await
    }

    /// Runs one of the compare-and-set scripts on `key` with `args` as `op`: `true` if it
    /// changed the key (the scripts answer 1 or 0).
    async fn script_cas(
        &self,
        op: DirectoryOp,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<bool, DirectoryError> {
        let mut conn = self.conn.clone();
        self.run(op, async {
            let mut invocation = script.key(key);
            for arg in args {
                invocation.arg(*arg);
            }
            let answer: Value = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| store_error(key, e))?;
            done(key, answer)
        })
        .await
    }

    /// Publishes `node`'s record for `ttl`: its hash (every field rewritten) and expiry in one
    /// `MULTI`, and its id in `baton:nodes`. Call it well within `ttl` (a third of it) so one
    /// slow round trip does not make the node vanish.
    pub async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), DirectoryError> {
        node.validate().map_err(DirectoryError::Invalid)?;
        let ms = ttl_ms(ttl)?;
        let key = node_key(&node.id);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("HSET").arg(&key);
        for (field, value) in node.fields() {
            pipe.arg(field).arg(value);
        }
        pipe.ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ms)
            .ignore()
            .cmd("SADD")
            .arg(NODES_KEY)
            .arg(node.id.as_str())
            .ignore();
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::Heartbeat, async {
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| store_error(&key, e))
        })
        .await
    }

    /// Every live node (its record has not expired), sorted by id, at most [`MAX_NODES`].
    /// Ids whose record expired are removed from `baton:nodes`. A record that does not parse
    /// is left out and logged, so one bad record does not hide the fleet; [`Self::node`]
    /// reports it as [`DirectoryError::Corrupt`].
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, DirectoryError> {
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::Nodes, async {
            let raw: Vec<Vec<u8>> = redis::cmd("SRANDMEMBER")
                .arg(NODES_KEY)
                .arg(MAX_NODES)
                .query_async(&mut conn)
                .await
                .map_err(|e| store_error(NODES_KEY, e))?;
            let mut ids = Vec::with_capacity(raw.len());
            for id in raw.iter().take(MAX_NODES) {
                match std::str::from_utf8(id).ok().map(NodeId::parse) {
                    Some(Ok(id)) => ids.push(id),
                    _ => tracing::warn!(
                        key = NODES_KEY,
                        member = %String::from_utf8_lossy(&id[..id.len().min(MAX_NODE_ID_LEN)]),
                        "directory: a member of the node set is not a node id; skipped"
                    ),
                }
            }
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            // Errors are answered per record, so one record of the wrong type is skipped
            // like any other corrupt one.
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for id in &ids {
                pipe.cmd("HMGET").arg(node_key(id)).arg(&NODE_FIELDS[..]);
            }
            let records: Vec<redis::RedisResult<Vec<Option<Vec<u8>>>>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| store_error(NODES_KEY, e))?;
            if records.len() != ids.len() {
                return Err(corrupt(
                    NODES_KEY,
                    format!("{} answers to {} reads", records.len(), ids.len()),
                ));
            }
            let mut live = Vec::with_capacity(ids.len());
            let mut expired = Vec::new();
            for (id, values) in ids.into_iter().zip(records) {
                let key = node_key(&id);
                let parsed = values.map_err(|e| store_error(&key, e)).and_then(|values| {
                    NodeInfo::from_fields(id.clone(), &values).map_err(|d| corrupt(&key, d))
                });
                match parsed {
                    Ok(Some(info)) => live.push(info),
                    Ok(None) => expired.push(id),
                    Err(DirectoryError::Corrupt { key, detail }) => tracing::warn!(
                        %key,
                        %detail,
                        "directory: a node record does not parse; skipped"
                    ),
                    Err(e) => return Err(e),
                }
            }
            if !expired.is_empty() {
                let mut prune = self.scripts.prune_nodes.prepare_invoke();
                for id in &expired {
                    prune.key(node_key(id)).arg(id.as_str());
                }
                prune.key(NODES_KEY);
                let _: i64 = prune
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| store_error(NODES_KEY, e))?;
            }
            live.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(live)
        })
        .await
    }

    /// The record of node `id`, if it is live.
    pub async fn node(&self, id: &NodeId) -> Result<Option<NodeInfo>, DirectoryError> {
        let key = node_key(id);
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::Node, async {
            let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&key)
                .arg(&NODE_FIELDS[..])
                .query_async(&mut conn)
                .await
                .map_err(|e| store_error(&key, e))?;
            NodeInfo::from_fields(id.clone(), &values).map_err(|detail| corrupt(&key, detail))
        })
        .await
    }

    /// Removes node `id`'s record and its id from `baton:nodes` (a clean exit), in one
    /// `MULTI`.
    pub async fn remove_node(&self, id: &NodeId) -> Result<(), DirectoryError> {
        let key = node_key(id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("SREM")
            .arg(NODES_KEY)
            .arg(id.as_str())
            .ignore();
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::RemoveNode, async {
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(|e| store_error(&key, e))
        })
        .await
    }

    /// Tries to claim each of `codes` (at most [`MAX_CODES_PER_CLAIM`]) for `node` for `ttl`,
    /// in one pipeline of `SET NX PX`; returns the codes this call won, in the order given.
    /// A code held by anyone (this node included) is not won again. If the call fails after
    /// the store ran it, the codes it won expire after `ttl`.
    pub async fn claim_codes(
        &self,
        node: &NodeId,
        codes: &[String],
        ttl: Duration,
    ) -> Result<Vec<String>, DirectoryError> {
        if codes.len() > MAX_CODES_PER_CLAIM {
            return Err(DirectoryError::Invalid(format!(
                "{} codes in one claim, over {MAX_CODES_PER_CLAIM}",
                codes.len()
            )));
        }
        for code in codes {
            valid_code(code)?;
        }
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        let ms = ttl_ms(ttl)?;
        let mut pipe = redis::pipe();
        for code in codes {
            pipe.cmd("SET")
                .arg(code_key(code))
                .arg(node.as_str())
                .arg("NX")
                .arg("PX")
                .arg(ms);
        }
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::ClaimCodes, async {
            let answers: Vec<Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| store_error("baton:code:*", e))?;
            if answers.len() != codes.len() {
                return Err(corrupt(
                    "baton:code:*",
                    format!("{} answers to {} claims", answers.len(), codes.len()),
                ));
            }
            let mut won = Vec::new();
            for (code, answer) in codes.iter().zip(answers) {
                match answer {
                    Value::Okay => won.push(code.clone()),
                    Value::Nil => {}
                    other => {
                        return Err(corrupt(
                            &code_key(code),
                            format!("unexpected answer to SET NX {other:?}"),
                        ))
                    }
                }
            }
            Ok(won)
        })
        .await
    }

    /// Binds `code` to `allocation` for `ttl` if `node` still holds it (claimed, or bound
    /// before: binding again refreshes the TTL). Returns whether it did; `false` means another
    /// node holds the code or it expired.
    pub async fn bind_code(
        &self,
        code: &str,
        node: &NodeId,
        allocation: u64,
        ttl: Duration,
    ) -> Result<bool, DirectoryError> {
        valid_code(code)?;
        let ms = ttl_ms(ttl)?;
        let key = code_key(code);
        let value = CodeRecord {
            node: node.clone(),
            allocation: Some(allocation),
        }
        .to_value();
        self.script_cas(
            DirectoryOp::BindCode,
            &self.scripts.bind_code,
            &key,
            &[node.as_str(), &value, &ms.to_string()],
        )
        .await
    }

    /// Who holds `code`, if anyone.
    pub async fn lookup_code(&self, code: &str) -> Result<Option<CodeRecord>, DirectoryError> {
        valid_code(code)?;
        let key = code_key(code);
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::LookupCode, async {
            let answer: Value = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| store_error(&key, e))?;
            match bytes_or_nil(&key, answer)? {
                None => Ok(None),
                Some(raw) => CodeRecord::parse(&raw)
                    .map(Some)
                    .map_err(|detail| corrupt(&key, detail)),
            }
        })
        .await
    }

    /// Deletes `code` if `node` holds it (claimed or bound). Returns whether it did.
    pub async fn release_code(&self, code: &str, node: &NodeId) -> Result<bool, DirectoryError> {
        valid_code(code)?;
        let key = code_key(code);
        self.script_cas(
            DirectoryOp::ReleaseCode,
            &self.scripts.release_code,
            &key,
            &[node.as_str()],
        )
        .await
    }

    /// Records that `node` holds `allocation`, for `ttl` (replacing any earlier record).
    pub async fn bind_allocation(
        &self,
        allocation: u64,
        node: &NodeId,
        ttl: Duration,
    ) -> Result<(), DirectoryError> {
        let ms = ttl_ms(ttl)?;
        let key = alloc_key(allocation);
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::BindAllocation, async {
            redis::cmd("SET")
                .arg(&key)
                .arg(node.as_str())
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| store_error(&key, e))
        })
        .await
    }

    /// The node holding `allocation`, if it is recorded.
    pub async fn lookup_allocation(
        &self,
        allocation: u64,
    ) -> Result<Option<NodeId>, DirectoryError> {
        let key = alloc_key(allocation);
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::LookupAllocation, async {
            let answer: Value = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| store_error(&key, e))?;
            match bytes_or_nil(&key, answer)? {
                None => Ok(None),
                Some(raw) => parse_node_value(&raw)
                    .map(Some)
                    .map_err(|detail| corrupt(&key, detail)),
            }
        })
        .await
    }

    /// Deletes `allocation`'s record if `node` holds it. Returns whether it did.
    pub async fn release_allocation(
        &self,
        allocation: u64,
        node: &NodeId,
    ) -> Result<bool, DirectoryError> {
        let key = alloc_key(allocation);
        self.script_cas(
            DirectoryOp::ReleaseAllocation,
            &self.scripts.delete_if_equal,
            &key,
            &[node.as_str()],
        )
        .await
    }

    /// Stores `allocation`'s takeover record (at most [`MAX_RECORD_BYTES`]) for `ttl`.
    pub async fn put_record(
        &self,
        allocation: u64,
        record: &[u8],
        ttl: Duration,
    ) -> Result<(), DirectoryError> {
        if record.len() > MAX_RECORD_BYTES {
            return Err(DirectoryError::Invalid(format!(
                "a record of {} bytes is over {MAX_RECORD_BYTES}",
                record.len()
            )));
        }
        let ms = ttl_ms(ttl)?;
        let key = record_key(allocation);
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::PutRecord, async {
            redis::cmd("SET")
                .arg(&key)
                .arg(record)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| store_error(&key, e))
        })
        .await
    }

    /// `allocation`'s takeover record, if stored; never more than [`MAX_RECORD_BYTES`] are
    /// read (a longer value is `Corrupt`).
    pub async fn get_record(&self, allocation: u64) -> Result<Option<Vec<u8>>, DirectoryError> {
        let key = record_key(allocation);
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::GetRecord, async {
            let (exists, answer): (bool, Value) = redis::pipe()
                .cmd("EXISTS")
                .arg(&key)
                .cmd("GETRANGE")
                .arg(&key)
                .arg(0)
                .arg(MAX_RECORD_BYTES)
                .query_async(&mut conn)
                .await
                .map_err(|e| store_error(&key, e))?;
            if !exists {
                return Ok(None);
            }
            let raw = bytes_or_nil(&key, answer)?.unwrap_or_default();
            if raw.len() > MAX_RECORD_BYTES {
                return Err(corrupt(
                    &key,
                    format!("longer than {MAX_RECORD_BYTES} bytes"),
                ));
            }
            Ok(Some(raw))
        })
        .await
    }

    /// Deletes `allocation`'s takeover record.
    pub async fn delete_record(&self, allocation: u64) -> Result<(), DirectoryError> {
        let key = record_key(allocation);
        let mut conn = self.conn.clone();
        self.run(DirectoryOp::DeleteRecord, async {
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| store_error(&key, e))
        })
        .await
    }

    /// Moves `allocation` from node `from` to node `to` for `ttl`, only if `from` still holds
    /// it: when several nodes race to take over a lost node's allocation, exactly one wins.
    pub async fn take_allocation(
        &self,
        allocation: u64,
        from: &NodeId,
        to: &NodeId,
        ttl: Duration,
    ) -> Result<bool, DirectoryError> {
        let ms = ttl_ms(ttl)?;
        let key = alloc_key(allocation);
        self.script_cas(
            DirectoryOp::TakeAllocation,
            &self.scripts.take_if_equal,
            &key,
            &[from.as_str(), to.as_str(), &ms.to_string()],
        )
        .await
    }

    /// Moves `code` from node `from` (claimed or bound) to node `to`, bound to `allocation`,
    /// for `ttl`, only if `from` still holds it. Returns whether it did.
    pub async fn take_code(
        &self,
        code: &str,
        from: &NodeId,
        to: &NodeId,
        allocation: u64,
        ttl: Duration,
    ) -> Result<bool, DirectoryError> {
        valid_code(code)?;
        let ms = ttl_ms(ttl)?;
        let key = code_key(code);
        let value = format!("{to} {}", allocation_hex(allocation));
        self.script_cas(
            DirectoryOp::TakeCode,
            &self.scripts.take_code,
            &key,
            &[from.as_str(), &value, &ms.to_string()],
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        let id = NodeId::parse("relay-1").unwrap();
        assert_eq!(node_key(&id), "baton:node:relay-1");
        assert_eq!(code_key("BCDF78"), "baton:code:BCDF78");
        assert_eq!(alloc_key(0xabc), "baton:alloc:0000000000000abc");
    }

    #[test]
    fn ttls() {
        assert_eq!(ttl_ms(Duration::from_millis(300)), Ok(300));
        assert_eq!(ttl_ms(MAX_TTL), Ok(30 * 24 * 3600 * 1000));
        assert!(ttl_ms(Duration::ZERO).is_err());
        assert!(ttl_ms(Duration::from_micros(999)).is_err());
        assert!(ttl_ms(MAX_TTL + Duration::from_millis(1)).is_err());
    }

    #[tokio::test]
    async fn urls_are_checked_before_connecting() {
        let metrics = Arc::new(Metrics::new());
        for bad in [
            "http://127.0.0.1:6379",
            "127.0.0.1:6379",
            "",
            "redis://[::1",
        ] {
            match RedisDirectory::connect(bad, metrics.clone()).await {
                Err(DirectoryError::InvalidUrl(_)) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
