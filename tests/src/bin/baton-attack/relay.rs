//! The relay under attack: one `baton-relay` child process (the binary beside this one, or
//! `--relay-bin`) with its default limits, an `--auth-secret` so that credentials matter, QUIC
//! and admin on loopback ports the kernel picks, JSON logs in a throw-away data directory. Also
//! reads its `/metrics` and samples its CPU time and memory from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use baton_tests::procstat::{self, ProcSample};
use baton_tests::relay_process::{self, wait_until_running, DataDir, Metrics};

/// How long the relay may take to print its `relay running` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the relay has to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(6);
/// How long one `/metrics` or `/healthz` request may take (the admin server is itself under
/// attack in some runs).
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// The running relay child.
pub struct Relay {
    /// QUIC address.
    pub addr: SocketAddr,
    /// Admin server address.
    pub admin: SocketAddr,
    /// Its certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// Its certificate's fingerprint, hex.
    pub fingerprint: String,
    /// The secret its credentials are minted with.
    pub secret: Vec<u8>,
    /// Process id.
    pub pid: u32,
    /// How it was started, for the report.
    pub description: String,
    child: tokio::process::Child,
    _dir: DataDir,
    http: reqwest::Client,
}

impl Relay {
    /// Starts `bin` (or the relay beside this executable) with `secret` (text: the relay
    /// takes the flag's bytes as they are) as its only `--auth-secret` and every limit at its default.
    pub async fn start(bin: Option<&Path>, secret: Vec<u8>) -> anyhow::Result<Relay> {
        let bin: PathBuf = match bin {
            Some(bin) => bin.to_owned(),
            None => relay_process::relay_bin_beside_this_exe("baton-attack")?,
        };
        let (data, stdout, stderr) = DataDir::create("baton-attack-")?;
        let mut child = tokio::process::Command::new(&bin)
            .arg("--data-dir")
            .arg(data.dir.path())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--log-level", "warn"])
            .arg("--auth-secret")
            .arg(String::from_utf8_lossy(&secret).as_ref())
            // The binary's own target still logs `relay running` (its ports are read from it).
            .env("RUST_LOG", "warn,baton_relay=info,baton_relay::=warn")
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("relay process id")?;
        let running = wait_until_running(
            &mut child,
            &bin,
            &data.log_path,
            &data.err_path,
            START_TIMEOUT,
        )
        .await?;
        let admin = running
            .admin
            .context("the relay runs without its admin server")?;
        let cert_pem = std::fs::read(&running.cert).context("reading the relay certificate")?;
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("HTTP client")?;
        Ok(Relay {
            addr: running.quic,
            admin,
            cert_pem,
            fingerprint: running.fingerprint,
            secret,
            pid,
            description: format!(
                "{} (pid {pid}, default limits, one --auth-secret)",
                bin.display()
            ),
            child,
            _dir: data,
            http,
        })
    }

    /// The relay's metrics, or `None` when the admin server does not answer in time.
    pub async fn metrics(&self) -> Option<Metrics> {
        let url = format!("http://{}/metrics", self.admin);
        let text = self.http.get(url).send().await.ok()?.text().await.ok()?;
        Some(Metrics::parse(&text))
    }

    /// The relay's CPU time and memory, `None` once it has exited.
    pub fn sample(&self) -> Option<ProcSample> {
        procstat::process(Some(self.pid))
    }

    /// Stops the relay: SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        // No signal crate in this package: `kill` is everywhere the relay runs.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
