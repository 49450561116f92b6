//! The fleet under test: a `redis-server` child on a free loopback port as the directory, and
//! `baton-relay` child processes as its nodes, each started as an operator would
//! (`--directory`, `--node-id`, `--public-addr`, `--fleet-secret` in the environment,
//! `--drain-timeout`), all serving the one development certificate the first node generates.
//!
//! Each node logs JSON to a file in its own temporary directory (never a pipe, which would
//! stall it when full); the bench reads its ports from its `relay running` line. A node stops
//! with SIGTERM (at once: `--drain-timeout 0s`, the bench drains through the admin API), or is
//! killed when dropped.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use baton_client::{ClientConfig, Trust};
use baton_relay::directory::{NodeState, RedisDirectory};
use baton_tests::redis_server::RedisServer;
use baton_tests::relay_process::{tail, wait_until_running, DataDir};

use crate::procstat;

/// How long a node may take to print its `relay running` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the nodes may take to appear in the directory as active.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest admin API response read (a `/v1/allocations` list of thousands of allocations is
/// well under it).
const MAX_ADMIN_BODY: usize = 64 * 1024 * 1024;

/// How the nodes are started beyond what every node gets.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `baton-relay` to run.
    pub bin: PathBuf,
    /// `--log-level`.
    pub log_level: String,
    /// `--max-connections` (at least the relay's default).
    pub max_connections: usize,
    /// `--max-connections-per-ipv4-address` and `--max-connections-per-ipv4-24`: every client
    /// of the bench connects from 127.0.0.1, standing for as many addresses as it has sessions.
    pub per_address: usize,
}

/// One node: a `baton-relay` child process.
pub struct Node {
    /// Its `--node-id`.
    pub id: String,
    /// Its QUIC address (also its `--public-addr`).
    pub addr: SocketAddr,
    /// Its admin server's base URL.
    pub admin: String,
    /// Its process id.
    pub pid: Option<u32>,
    child: Option<tokio::process::Child>,
    logs: DataDir,
}

/// The directory and the nodes sharing it.
pub struct Fleet {
    /// The directory's server (killed when dropped).
    redis: RedisServer,
    /// A client of the directory, to see which nodes are registered.
    directory: RedisDirectory,
    /// Where the first node generates the certificate every node serves.
    certs: tempfile::TempDir,
    /// The fleet secret, 32 random bytes in hex, given to every node in its environment.
    secret: String,
    options: NodeOptions,
    /// Every node started, in order, running or not.
    pub nodes: Vec<Node>,
    /// How clients trust the nodes: the shared certificate's fingerprint.
    pub trust: Option<Trust>,
    /// Client of the admin APIs.
    pub http: reqwest::Client,
}

/// 32 random bytes as hex, from the kernel's generator.
fn random_secret() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the fleet secret")?;
    Ok(hex::encode(bytes))
}

impl Fleet {
    /// Starts the directory's `redis-server` (it must be on `PATH`) and no node yet.
    pub async fn start(options: NodeOptions) -> anyhow::Result<Fleet> {
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .context("starting redis-server")??;
        let directory =
            RedisDirectory::connect(&redis.url(), Arc::new(baton_relay::metrics::Metrics::new()))
                .await
                .context("connecting to the directory")?;
        let certs = tempfile::Builder::new()
            .prefix("baton-bench-fleet-")
            .tempdir()
            .context("certificate directory")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("HTTP client")?;
        Ok(Fleet {
            redis,
            directory,
            certs,
            secret: random_secret()?,
            options,
            nodes: Vec::new(),
            trust: None,
            http,
        })
    }

    /// Whether the nodes log at `info` or more (their `allocation closed` lines, which the
    /// drain checks, are `info`).
    pub fn logs_info(&self) -> bool {
        matches!(
            self.options.log_level.to_ascii_lowercase().as_str(),
            "info" | "debug" | "trace"
        )
    }

    /// The directory's URL.
    pub fn directory_url(&self) -> String {
        self.redis.url()
    }

    /// Starts node `id` and waits until it runs; returns its index in [`Fleet::nodes`].
    pub async fn add_node(&mut self, id: &str) -> anyhow::Result<usize> {
        let (logs, stdout, stderr) = DataDir::create(&format!("baton-bench-node-{id}-"))?;
        let o = &self.options;
        let mut cmd = tokio::process::Command::new(&o.bin);
        cmd.arg("--data-dir")
            .arg(self.certs.path())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            // Port 0: the port the node binds.
            .args(["--public-addr", "127.0.0.1:0"])
            .args(["--directory", &self.redis.url(), "--node-id", id])
            // The bench drains through the admin API and measures that; SIGTERM then stops a
            // node at once when the run is over.
            .args(["--drain-timeout", "0s"])
            .args(["--log-format", "json", "--log-level", &o.log_level])
            .arg("--max-connections")
            .arg(o.max_connections.to_string())
            .arg("--max-connections-per-ipv4-address")
            .arg(o.per_address.to_string())
            .arg("--max-connections-per-ipv4-24")
            .arg(o.per_address.to_string())
            .env("BATON_FLEET_SECRET", &self.secret)
            // The binary's own target still logs `relay running` (read for the ports) whatever
            // the level.
            .env(
                "RUST_LOG",
                format!("{l},baton_relay=info,baton_relay::={l}", l = o.log_level),
            )
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", o.bin.display()))?;
        let pid = child.id();
        let running = wait_until_running(
            &mut child,
            &o.bin,
            &logs.log_path,
            &logs.err_path,
            START_TIMEOUT,
        )
        .await
        .with_context(|| format!("node {id}"))?;
        let Some(admin) = running.admin else {
            bail!("node {id} runs without its admin server");
        };
        let trust = Trust::fingerprint_hex(&running.fingerprint)
            .with_context(|| format!("node {id}'s fingerprint"))?;
        if self.trust.is_none() {
            self.trust = Some(trust);
        } else if !same_trust(self.trust.as_ref(), &trust) {
            bail!("node {id} serves another certificate than the first node");
        }
        self.nodes.push(Node {
            id: id.to_owned(),
            addr: running.quic,
            admin: format!("http://{admin}"),
            pid,
            child: Some(child),
            logs,
        });
        Ok(self.nodes.len() - 1)
    }

    /// Waits until the directory lists exactly the running nodes, each active.
    pub async fn wait_registered(&self) -> anyhow::Result<()> {
        let want: BTreeSet<&str> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id.as_str())
            .collect();
        let start = Instant::now();
        loop {
            if let Ok(nodes) = self.directory.nodes().await {
                let active: BTreeSet<&str> = nodes
                    .iter()
                    .filter(|n| n.state == NodeState::Active)
                    .filter_map(|n| want.get(n.id.as_str()).copied())
                    .collect();
                if active == want && nodes.len() == want.len() {
                    return Ok(());
                }
            }
            if start.elapsed() > REGISTER_TIMEOUT {
                bail!("the directory did not list nodes {want:?} as active within {REGISTER_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most [`REGISTER_TIMEOUT`]) until the directory says node `id` holds each of
    /// `allocations`.
    pub async fn wait_bound(&self, id: &str, allocations: &[u64]) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut next = 0;
        while next < allocations.len() {
            match self.directory.lookup_allocation(allocations[next]).await {
                Ok(Some(node)) if node.as_str() == id => next += 1,
                _ if start.elapsed() > REGISTER_TIMEOUT => bail!(
                    "the directory did not bind {} of the allocations to node {id} within {REGISTER_TIMEOUT:?}",
                    allocations.len() - next
                ),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        Ok(())
    }

    /// A client configuration for node `i`, trusting the fleet's certificate.
    pub fn config(&self, i: usize) -> anyhow::Result<ClientConfig> {
        let trust = self.trust.clone().context("no node started")?;
        Ok(ClientConfig::new(self.nodes[i].addr, trust))
    }

    /// The id of the node at `addr`, if it is one of the fleet's.
    pub fn node_at(&self, addr: SocketAddr) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.addr == addr)
            .map(|n| n.id.as_str())
    }

    /// Allocations node `i` holds, from its `/v1/allocations`.
    pub async fn allocations(&self, i: usize) -> anyhow::Result<usize> {
        allocations_at(&self.http, &self.nodes[i].admin).await
    }

    /// Waits (at most `within`) until no running node holds an allocation.
    pub async fn wait_empty(&self, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let mut busy = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if node.child.is_some() && self.allocations(i).await.unwrap_or(1) > 0 {
                    busy.push(node.id.clone());
                }
            }
            if busy.is_empty() {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!("nodes {busy:?} still hold allocations {within:?} after their games closed");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops node `i` if it still runs.
    pub async fn stop_node(&mut self, i: usize) {
        self.nodes[i].stop().await;
    }

    /// Stops every node that still runs, then the directory.
    pub async fn stop(mut self) {
        for node in &mut self.nodes {
            node.stop().await;
        }
        drop(self.redis);
    }
}

/// A UTC timestamp as the relay's JSON log writes it (`2026-12-02T14:49:03.123456Z`).
fn parse_utc(text: &str) -> Option<SystemTime> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0..=23).contains(&hour)
        || !(0..=59).contains(&minute)
        || !(0..=60).contains(&second)
        || fraction.is_empty()
        || fraction.len() > 9
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let nanos: u32 = format!("{fraction:0<9}").parse().ok()?;
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Whether two trusts pin the same certificate.
fn same_trust(a: Option<&Trust>, b: &Trust) -> bool {
    matches!((a, b), (Some(Trust::Fingerprint(x)), Trust::Fingerprint(y)) if x == y)
}

/// `GET {admin}/v1/allocations`: how many allocations the node holds.
pub async fn allocations_at(http: &reqwest::Client, admin: &str) -> anyhow::Result<usize> {
    let response = http
        .get(format!("{admin}/v1/allocations"))
        .send()
        .await
        .context("GET /v1/allocations")?;
    if !response.status().is_success() {
        bail!("GET /v1/allocations answered {}", response.status());
    }
    let body = read_bounded(response, MAX_ADMIN_BODY).await?;
    let list: serde_json::Value =
        serde_json::from_slice(&body).context("parsing /v1/allocations")?;
    list.get("allocations")
        .and_then(serde_json::Value::as_array)
        .map(Vec::len)
        .context("/v1/allocations without an allocations list")
}

/// A response body, refused beyond `max` bytes.
async fn read_bounded(mut response: reqwest::Response, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.context("reading a response")? {
        if body.len() + chunk.len() > max {
            bail!("response longer than {max} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Node {
    /// Whether the bench still considers it running (not stopped, not seen exiting).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `POST /v1/drain`; returns the allocations the node says are left to move.
    pub async fn drain(&self, http: &reqwest::Client) -> anyhow::Result<u64> {
        let response = http
            .post(format!("{}/v1/drain", self.admin))
            .send()
            .await
            .context("POST /v1/drain")?;
        let status = response.status();
        let body = read_bounded(response, 64 * 1024).await?;
        if status != reqwest::StatusCode::ACCEPTED {
            bail!(
                "POST /v1/drain answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&body).context("parsing the drain answer")?;
        answer
            .get("allocations")
            .and_then(serde_json::Value::as_u64)
            .context("drain answer without allocations")
    }

    /// The node's CPU-seconds so far, while its process runs.
    pub fn cpu_s(&self) -> Option<f64> {
        procstat::process(Some(self.pid?)).map(|s| s.cpu_s)
    }

    /// Waits until the process exits, at most until `deadline`, sampling its CPU time on the
    /// way. Returns when it exited (`None`: not by the deadline) and its last CPU reading.
    pub async fn wait_exit(&mut self, deadline: Instant) -> (Option<Instant>, Option<f64>) {
        let mut cpu = self.cpu_s();
        let Some(child) = self.child.as_mut() else {
            return (None, cpu);
        };
        loop {
            if let Some(now) = self.pid.and_then(|p| procstat::process(Some(p))) {
                cpu = Some(now.cpu_s);
            }
            match child.try_wait() {
                Ok(Some(_)) => {
                    self.child = None;
                    return (Some(Instant::now()), cpu);
                }
                Ok(None) => {}
                Err(_) => return (None, cpu),
            }
            if Instant::now() >= deadline {
                return (None, cpu);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many times the node logged `message` (with field `reason`, if given), and when it
    /// last did (its JSON log's timestamps: microseconds, UTC).
    pub fn logged(&self, message: &str, reason: Option<&str>) -> (usize, Option<SystemTime>) {
        let text = std::fs::read_to_string(&self.logs.log_path).unwrap_or_default();
        let times: Vec<Option<SystemTime>> = text
            .lines()
            .filter(|l| l.contains(message))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                let fields = v.get("fields");
                let field = |k: &str| fields.and_then(|f| f.get(k)).and_then(|x| x.as_str());
                field("message") == Some(message)
                    && reason.is_none_or(|r| field("reason") == Some(r))
            })
            .map(|v| parse_utc(v.get("timestamp")?.as_str()?))
            .collect();
        (times.len(), times.into_iter().flatten().max())
    }

    /// The end of the node's stderr, for error messages.
    pub fn err_tail(&self) -> String {
        tail(&self.logs.err_path)
    }

    /// Stops the node: SIGTERM, then SIGKILL after a grace period.
    async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::relay::stop_child(child).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_log_timestamps() {
        let at = |s: &str| {
            parse_utc(s).map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after the epoch")
                    .as_micros()
            })
        };
        assert_eq!(at("1970-01-01T00:00:00.000000Z"), Some(0));
        assert_eq!(at("2000-03-01T00:00:00Z"), Some(951_868_800_000_000));
        assert_eq!(
            at("2026-12-02T14:49:03.123456Z"),
            Some(1_796_222_943_123_456)
        );
        assert_eq!(at("2024-02-29T23:59:59.5Z"), Some(1_709_251_199_500_000));
        for bad in [
            "2026-12-02T14:49:03.123456",
            "2026-13-02T14:49:03Z",
            "2026-12-02 14:49:03Z",
            "2026-12-02T14:49:03.Z",
            "2026-12-02T14:49:03.12x456Z",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
