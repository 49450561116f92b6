//! The relay under test: a `baton-relay` child process started from this workspace's build
//! (next to the bench's own executable), or a relay already running somewhere named on the
//! command line. Also reads the relay's Prometheus metrics from its admin server.
//!
//! A child relay gets a throw-away data directory (its self-signed development certificate is
//! generated there and trusted by the bench), QUIC and admin ports chosen by the kernel on
//! loopback, JSON logs written to a file in that directory (never a pipe, which would stall the
//! relay when full), and limits raised to fit the run. The bench learns the ports from the
//! relay's `relay running` log line.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procstat;
use crate::report::{note, Progress};
use crate::Global;
use baton_tests::relay_process::{tail, wait_until_running, DataDir, Metrics};

/// Limits a run needs from the relay; a child relay gets at least these (and never less than
/// its own defaults).
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// Concurrent QUIC connections.
    pub connections: usize,
    /// Allocations held at once.
    pub allocations: usize,
    /// Members of one allocation, host included.
    pub members: usize,
}

/// The relay's default `--max-connections`; a child relay keeps each default unless a run
/// needs more.
const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// The relay's default `--max-allocations`.
const DEFAULT_MAX_ALLOCATIONS: usize = 10_000;
/// The relay's default `--max-peers-per-allocation`.
const DEFAULT_MAX_PEERS: usize = 150;

/// How long a child relay may take to print its `relay running` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a child relay started under a wrapper (valgrind runs it tens of times slower) may
/// take to print its `relay running` line.
const WRAPPED_START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a child relay has to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(6);

/// A relay the bench talks to.
pub struct Relay {
    /// QUIC address.
    pub addr: SocketAddr,
    /// TLS server name to ask for (the dev certificate holds `localhost`).
    pub server_name: String,
    /// PEM certificate the bench trusts.
    pub cert: PathBuf,
    /// Base URL of the admin server, e.g. `http://127.0.0.1:7701`.
    pub admin: Option<String>,
    /// Process id, when the relay runs on this machine and it is known.
    pub pid: Option<u32>,
    /// How the relay was started, for the report.
    pub description: String,
    child: Option<tokio::process::Child>,
    dir: Option<DataDir>,
    http: reqwest::Client,
}

impl Relay {
    /// Starts a child relay, or connects the bench to the one named by `--relay`.
    pub async fn start(global: &Global, needs: Needs) -> anyhow::Result<Relay> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("HTTP client")?;
        if let Some(addr) = global.relay {
            let Some(cert) = global.cert.clone() else {
                bail!("--relay needs --cert (the relay's certificate, PEM)");
            };
            if !addr.ip().is_loopback() {
                bail!("--relay must be a loopback address: the bench sends traffic only to 127.0.0.0/8 and ::1");
            }
            if let Some(admin) = &global.admin {
                check_loopback_url(admin)?;
            }
            return Ok(Relay {
                addr,
                server_name: global.server_name.clone(),
                cert,
                admin: global.admin.clone(),
                pid: global.relay_pid,
                description: format!("external relay at {addr}"),
                child: None,
                dir: None,
                http,
            });
        }
        Self::spawn(global, needs, http, &[]).await
    }

    /// Starts a child relay under `wrapper` (a program and its arguments, e.g. valgrind's; the
    /// relay's command line follows them). The wrapper must run the relay in its own process,
    /// as valgrind does, so [`Relay::pid`] is the relay's.
    pub async fn start_under(
        global: &Global,
        needs: Needs,
        wrapper: &[OsString],
    ) -> anyhow::Result<Relay> {
        if global.relay.is_some() {
            bail!("this benchmark starts its own relay; --relay does not apply");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("HTTP client")?;
        Self::spawn(global, needs, http, wrapper).await
    }

    async fn spawn(
        global: &Global,
        needs: Needs,
        http: reqwest::Client,
        wrapper: &[OsString],
    ) -> anyhow::Result<Relay> {
        let bin = match &global.relay_bin {
            Some(bin) => bin.clone(),
            None => baton_tests::relay_process::relay_bin_beside_this_exe("baton-bench")?,
        };
        let (data, stdout, stderr) = DataDir::create("baton-bench-")?;
        let connections = needs.connections.max(DEFAULT_MAX_CONNECTIONS);
        let allocations = needs.allocations.max(DEFAULT_MAX_ALLOCATIONS);
        let members = needs.members.max(DEFAULT_MAX_PEERS);
        let level = &global.relay_log_level;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args).arg(&bin);
                cmd
            }
            None => tokio::process::Command::new(&bin),
        };
        cmd.arg("--data-dir")
            .arg(data.dir.path())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--log-level", level])
            .arg("--max-connections")
            .arg(connections.to_string())
            .arg("--max-allocations")
            .arg(allocations.to_string())
            .arg("--max-peers-per-allocation")
            .arg(members.to_string())
            // The bench measures throughput: `--find-max` drives one connection far past the
            // per-client limits (default 500 datagrams/s), so they are lifted to their maximum
            // and the relay's forwarding, not its rate limiting, is what saturates.
            .args(["--client-datagrams-per-second", "1000000"])
            .args(["--client-bytes-per-second", "1073741824"])
            // Every simulated client connects from 127.0.0.1, standing for as many addresses
            // as there are clients: the per-address caps (default 64 per IPv4 address) would
            // otherwise refuse the crowd the idle benchmark measures.
            .arg("--max-connections-per-ipv4-address")
            .arg(connections.to_string())
            .arg("--max-connections-per-ipv4-24")
            .arg(connections.to_string())
            // The binary's own target still logs `relay running` (the bench reads its ports
            // from it) whatever the level; every module of the library keeps `level`.
            .env(
                "RUST_LOG",
                format!("{level},baton_relay=info,baton_relay::={level}"),
            )
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let running = wait_until_running(
            &mut child,
            &bin,
            &data.log_path,
            &data.err_path,
            if wrapper.is_empty() {
                START_TIMEOUT
            } else {
                WRAPPED_START_TIMEOUT
            },
        )
        .await?;
        let (addr, cert) = (running.quic, running.cert);
        Ok(Relay {
            addr,
            server_name: "localhost".to_owned(),
            cert,
            admin: running.admin.map(|a| format!("http://{a}")),
            pid,
            description: format!(
                "child {} (pid {}, --max-connections {connections} --max-allocations {allocations} \
                 --max-peers-per-allocation {members} --client-datagrams-per-second 1000000 \
                 --client-bytes-per-second 1073741824 --max-connections-per-ipv4-address \
                 {connections} --max-connections-per-ipv4-24 {connections} --log-level {level})",
                bin.display(),
                pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
            ),
            child: Some(child),
            dir: Some(data),
            http,
        })
    }

    /// Starts a relay that fits `needs` (or connects to the named one), notes it on `progress`
    /// as `bench`'s relay, runs `bench_fn` against it, and stops it whatever `bench_fn`
    /// returned.
    pub async fn run_bench<T>(
        global: &Global,
        needs: Needs,
        bench: &str,
        progress: &mut Progress,
        bench_fn: impl AsyncFnOnce(&Relay, &mut Progress) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let relay = Relay::start(global, needs).await?;
        note(progress, format!("{bench}: relay {}", relay.description));
        let result = bench_fn(&relay, progress).await;
        relay.stop().await;
        result
    }

    /// The relay as `/proc` sees it: its process (when known) and its UDP port.
    pub fn server(&self) -> crate::probe::Server {
        crate::probe::Server {
            pid: self.pid,
            port: Some(self.addr.port()),
        }
    }

    /// The relay's process counters, when it runs on this machine.
    pub fn proc_sample(&self) -> Option<procstat::ProcSample> {
        procstat::process(Some(self.pid?))
    }

    /// Fails if a child relay has exited (its `/proc` entry is gone or a zombie's).
    pub fn check_alive(&self) -> anyhow::Result<()> {
        if self.child.is_some() && self.proc_sample().is_none() {
            let err = self
                .dir
                .as_ref()
                .map(|d| tail(&d.err_path))
                .unwrap_or_default();
            bail!("the relay exited during the run: {err}");
        }
        Ok(())
    }

    /// The relay's metrics, or `None` without an admin server or when it does not answer.
    pub async fn metrics(&self) -> Option<Metrics> {
        let url = format!("{}/metrics", self.admin.as_ref()?);
        let text = self.http.get(url).send().await.ok()?.text().await.ok()?;
        Some(Metrics::parse(&text))
    }

    /// Waits (at most `within`) until the relay reports no connections and no allocations.
    /// Returns how long that took, or `None` if it did not happen or cannot be known.
    pub async fn wait_empty(&self, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            let m = self.metrics().await?;
            if m.value("baton_connections") == 0.0 && m.value("baton_allocations") == 0.0 {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Stops a child relay gracefully (SIGTERM, then SIGKILL after a grace period). An
    /// external relay is left alone.
    pub async fn stop(mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child).await;
        }
    }
}

/// Stops a child relay process: SIGTERM, then SIGKILL if it has not exited within the grace
/// period.
pub async fn stop_child(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        // No signal crate in this package: `kill` is everywhere the relay runs.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Fails unless `url` is an http(s) URL on a loopback host.
fn check_loopback_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--admin {url:?}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("--admin must be on loopback (127.0.0.0/8, ::1 or localhost), got {url:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_must_be_loopback() {
        for ok in [
            "http://127.0.0.1:7701",
            "http://127.9.0.1:1",
            "http://[::1]:7701",
            "http://localhost:7701",
        ] {
            assert!(check_loopback_url(ok).is_ok(), "{ok}");
        }
        for bad in ["http://10.0.0.1:7701", "http://example.com", "not a url"] {
            assert!(check_loopback_url(bad).is_err(), "{bad}");
        }
    }
}
