//! The relay under test: a `baton-relay` child process (next to this executable), its admin
//! API and metrics, its memory, and its logs.
//!
//! The relay gets a throw-away data directory, QUIC and admin ports chosen by the kernel on
//! 127.0.0.1, JSON logs, and short timeouts so that crashes, unbound connections and unclaimed
//! reservations expire within a run. Its stdout (the logs) and stderr go to files in the data
//! directory, never to pipes, which would stall the relay once full; [`LogScan`] reads them as
//! they grow. The soak learns the ports, certificate and fingerprint from the relay's
//! `relay running` log line.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use baton_tests::relay_process::{wait_until_running, DataDir, Metrics};
use serde_json::Value;

/// How long the relay may take to print its `relay running` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the relay has to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one admin or metrics request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Relay settings the soak chooses.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The binary.
    pub bin: PathBuf,
    /// `--keepalive-timeout`.
    pub keepalive_timeout: Duration,
    /// `--bind-timeout`.
    pub bind_timeout: Duration,
    /// `--host-bind-timeout`.
    pub host_bind_timeout: Duration,
    /// `--log-level`.
    pub log_level: String,
    /// More arguments, after the soak's own.
    pub extra: Vec<String>,
}

/// What makes a relay a node of a fleet.
#[derive(Debug, Clone)]
pub struct FleetNode {
    /// `--node-id`.
    pub id: String,
    /// `--directory`: the Redis URL.
    pub directory: String,
    /// `--fleet-secret`.
    pub secret: String,
    /// `--drain-timeout`.
    pub drain_timeout: Duration,
    /// `--data-dir`: where the fleet's shared certificate is (the first node writes it).
    pub cert_dir: PathBuf,
}

/// A running relay child process.
pub struct Relay {
    /// QUIC address.
    pub addr: SocketAddr,
    /// Its admin API.
    pub api: RelayApi,
    /// Certificate fingerprint, as the relay prints it.
    pub fingerprint: String,
    /// PEM certificate path.
    pub cert: PathBuf,
    /// Process id.
    pub pid: u32,
    /// The command line it was started with, for the report.
    pub command: String,
    /// The JSON log file (the relay's stdout).
    pub log_path: PathBuf,
    /// The relay's stderr.
    pub err_path: PathBuf,
    child: tokio::process::Child,
    dir: Option<tempfile::TempDir>,
}

impl Relay {
    /// Starts the relay and waits for its `relay running` line.
    pub async fn start(settings: &RelaySettings) -> anyhow::Result<Relay> {
        Relay::start_node(settings, None).await
    }

    /// Starts the relay, a node of a fleet when `fleet` says so (its certificate then comes
    /// from the fleet's shared directory; its logs stay in its own), and waits for its
    /// `relay running` line.
    pub async fn start_node(
        settings: &RelaySettings,
        fleet: Option<&FleetNode>,
    ) -> anyhow::Result<Relay> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("HTTP client")?;
        let (data, stdout, stderr) = DataDir::create("baton-soak-")?;
        let DataDir {
            dir,
            log_path,
            err_path,
        } = data;
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let data_dir = fleet.map_or_else(|| dir.path().to_owned(), |f| f.cert_dir.clone());
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--log-format".into(),
            "json".into(),
            "--log-level".into(),
            settings.log_level.clone(),
            "--keepalive-timeout".into(),
            ms(settings.keepalive_timeout),
            "--bind-timeout".into(),
            ms(settings.bind_timeout),
            "--host-bind-timeout".into(),
            ms(settings.host_bind_timeout),
        ];
        if let Some(fleet) = fleet {
            args.extend([
                "--directory".into(),
                fleet.directory.clone(),
                "--node-id".into(),
                fleet.id.clone(),
                "--public-addr".into(),
                "127.0.0.1:0".into(),
                "--fleet-secret".into(),
                fleet.secret.clone(),
                "--drain-timeout".into(),
                ms(fleet.drain_timeout),
            ]);
        }
        args.extend(settings.extra.iter().cloned());
        let command = format!("{} {}", settings.bin.display(), args.join(" "));
        let mut child = tokio::process::Command::new(&settings.bin)
            .args(&args)
            // The binary's `relay running` line is at info; keep the level the soak chose
            // whatever the caller's environment says.
            .env_remove("RUST_LOG")
            .env_remove("BATON_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", settings.bin.display()))?;
        let pid = child.id().context("relay process id")?;
        let running = wait_until_running(
            &mut child,
            &settings.bin,
            &log_path,
            &err_path,
            START_TIMEOUT,
        )
        .await?;
        let addr = running.quic;
        let admin = running
            .admin
            .context("the relay runs without its admin server")?;
        if !addr.ip().is_loopback() || !admin.ip().is_loopback() {
            bail!(
                "the relay listens beyond loopback ({addr}, {admin}); the soak stays on 127.0.0.1"
            );
        }
        Ok(Relay {
            addr,
            api: RelayApi {
                admin: format!("http://{admin}"),
                http,
            },
            fingerprint: running.fingerprint,
            cert: running.cert,
            pid,
            command,
            log_path,
            err_path,
            child,
            dir: Some(dir),
        })
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the relay with SIGKILL (no drain, no goodbye: a lost machine) and reaps it.
    pub async fn kill(&mut self) -> String {
        match self.child.kill().await {
            Ok(()) => "killed".to_owned(),
            Err(e) => format!("kill failed: {e}"),
        }
    }

    /// How the process ended, if it has (reaps it).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Resident memory now, KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    }

    /// Stops the relay: SIGTERM, then SIGKILL after a grace period. Returns how it ended.
    pub async fn stop(&mut self) -> String {
        if let Some(status) = self.exit_status() {
            return status.to_string();
        }
        // No signal crate in this package: `kill` is everywhere the relay runs.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = self.child.kill().await;
                format!("did not stop within {STOP_TIMEOUT:?} after SIGTERM; killed")
            }
        }
    }

    /// Keeps the data directory (logs, certificate) after the soak ends; returns its path.
    pub fn keep_dir(&mut self) -> Option<PathBuf> {
        self.dir.take().map(tempfile::TempDir::keep)
    }
}

/// The relay's admin server: `/metrics` and the `/v1/allocations` routes.
#[derive(Debug, Clone)]
pub struct RelayApi {
    /// Base URL, `http://127.0.0.1:port`.
    pub admin: String,
    http: reqwest::Client,
}

impl RelayApi {
    /// The relay's metrics, or why they could not be read.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let text = ok(
            self.http.get(format!("{}/metrics", self.admin)),
            "GET /metrics",
        )
        .await?
        .text()
        .await
        .context("reading /metrics")?;
        Ok(Metrics::parse(&text))
    }

    /// `GET /v1/allocations`: the `allocations` array.
    pub async fn allocations(&self) -> anyhow::Result<Vec<Value>> {
        let body = json(
            self.http.get(format!("{}/v1/allocations", self.admin)),
            "GET /v1/allocations",
            "decoding /v1/allocations",
        )
        .await?;
        match body.get("allocations").and_then(Value::as_array) {
            Some(list) => Ok(list.clone()),
            None => bail!("GET /v1/allocations answered without an `allocations` array: {body}"),
        }
    }

    /// `GET /v1/allocations/{id}`: `Some(info)`, or `None` on 404.
    pub async fn allocation(&self, id: u64) -> anyhow::Result<Option<Value>> {
        let response = self
            .http
            .get(format!("{}/v1/allocations/{id:016x}", self.admin))
            .send()
            .await
            .context("GET /v1/allocations/{id}")?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response
            .error_for_status()
            .context("GET /v1/allocations/{id}")?
            .json()
            .await
            .context("decoding /v1/allocations/{id}")?;
        Ok(Some(body))
    }

    /// `POST /v1/drain`: the node starts draining. Returns the allocations it had to move.
    pub async fn drain(&self) -> anyhow::Result<u64> {
        let body = json(
            self.http.post(format!("{}/v1/drain", self.admin)),
            "POST /v1/drain",
            "decoding the drain answer",
        )
        .await?;
        body.get("allocations")
            .and_then(Value::as_u64)
            .with_context(|| format!("drain answer without allocations: {body}"))
    }

    /// `POST /v1/allocations`: reserves an allocation, returns its id.
    /// Reserves an allocation, on fleet node `node` when named.
    pub async fn reserve(&self, node: Option<&str>) -> anyhow::Result<u64> {
        let mut request = self.http.post(format!("{}/v1/allocations", self.admin));
        if let Some(node) = node {
            request = request.json(&serde_json::json!({ "node": node }));
        }
        let body = json(request, "POST /v1/allocations", "decoding the reservation").await?;
        let id = body
            .get("allocation_id")
            .and_then(Value::as_str)
            .with_context(|| format!("reservation without allocation_id: {body}"))?;
        u64::from_str_radix(id, 16).with_context(|| format!("allocation id {id:?}"))
    }
}

/// Sends `request` (`what` names it in errors, e.g. `GET /metrics`) and refuses an error status.
async fn ok(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
    request
        .send()
        .await
        .context(what.to_owned())?
        .error_for_status()
        .context(what.to_owned())
}

/// Like [`ok`], then decodes the body as JSON (`decoding` names that step in errors).
async fn json(
    request: reqwest::RequestBuilder,
    what: &str,
    decoding: &str,
) -> anyhow::Result<Value> {
    ok(request, what)
        .await?
        .json()
        .await
        .context(decoding.to_owned())
}

/// Error-level log lines the soak expects from the relay and does not count as failures.
/// (None so far: every error the relay logs is a problem in this setting.)
const EXPECTED_ERRORS: &[&str] = &[];

/// Incremental reader of the relay's log files: counts lines by level and keeps the
/// error-level ones (and the first warnings) for the report.
#[derive(Debug, Default)]
pub struct LogScan {
    log_offset: u64,
    err_offset: u64,
    partial: String,
    /// Log lines read, by level.
    pub by_level: BTreeMap<String, u64>,
    /// Warnings by message.
    pub warnings: BTreeMap<String, u64>,
    /// Unexpected error-level lines (the first [`KEEP`] of them).
    pub errors: Vec<String>,
    /// Unexpected error-level lines in all.
    pub error_count: u64,
    /// Lines of the relay's stderr (it logs to stdout, so anything here is unexpected).
    pub stderr: Vec<String>,
    /// Lines that were not JSON.
    pub unparsed: u64,
    /// Per allocation, how often the node logged taking it over (a fleet node).
    pub takeovers: BTreeMap<String, u64>,
}

/// Unexpected lines kept verbatim for the report.
const KEEP: usize = 20;
/// What a fleet node logs when it takes an allocation over from another node.
pub const TAKEOVER_MESSAGE: &str = "taking an allocation over";
/// Allocations whose takeovers are counted, at most.
const KEEP_TAKEOVERS: usize = 10_000;

impl LogScan {
    /// Reads what the relay wrote since the last call. Returns the new unexpected errors.
    pub fn scan(&mut self, relay: &Relay) -> Vec<String> {
        let mut fresh = Vec::new();
        let text = read_from(&relay.log_path, &mut self.log_offset);
        self.partial.push_str(&text);
        let complete = match self.partial.rfind('\n') {
            Some(end) => {
                let rest = self.partial.split_off(end + 1);
                std::mem::replace(&mut self.partial, rest)
            }
            None => return fresh,
        };
        for line in complete.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(json) = serde_json::from_str::<Value>(line) else {
                self.unparsed += 1;
                continue;
            };
            let level = json
                .get("level")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            let message = json
                .pointer("/fields/message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            *self.by_level.entry(level.clone()).or_default() += 1;
            if message == TAKEOVER_MESSAGE && self.takeovers.len() < KEEP_TAKEOVERS {
                let alloc = json
                    .pointer("/fields/allocation")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
                *self.takeovers.entry(alloc).or_default() += 1;
            }
            match level.as_str() {
                "ERROR" if !EXPECTED_ERRORS.iter().any(|e| message.contains(e)) => {
                    self.error_count += 1;
                    if self.errors.len() < KEEP {
                        self.errors.push(line.to_owned());
                    }
                    fresh.push(line.to_owned());
                }
                "WARN" => *self.warnings.entry(message).or_default() += 1,
                _ => {}
            }
        }
        let err = read_from(&relay.err_path, &mut self.err_offset);
        for line in err.lines().filter(|l| !l.trim().is_empty()) {
            if self.stderr.len() < KEEP {
                self.stderr.push(line.to_owned());
            }
            fresh.push(format!("stderr: {line}"));
        }
        fresh
    }
}

/// What was appended to `path` since `offset` (at most 16 MiB per call), advancing `offset`.
fn read_from(path: &Path, offset: &mut u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    if file.seek(SeekFrom::Start(*offset)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.take(16 << 20).read_to_end(&mut buf);
    *offset += buf.len() as u64;
    String::from_utf8_lossy(&buf).into_owned()
}
