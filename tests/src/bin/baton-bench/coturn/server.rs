//! The `turnserver` child process (Debian's `coturn`): found on `PATH`, started with an
//! explicit command line and nothing read from `/etc` ([`command_line`]), probed with STUN
//! Binding requests until it answers, stopped (SIGTERM, then SIGKILL) and reaped at the end.
//! A `Turnserver` dropped without [`Turnserver::stop`] kills its child (kill-on-drop), and its
//! temporary directory (log, pid file, SQLite user database) goes with it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use baton_tests::relay_process::tail;
use tokio::net::UdpSocket;

use super::stun::Request;
use super::transact;

/// How long a started `turnserver` may take to answer a Binding request.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long it has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Attempts to start it, each on a fresh port (another process may take the port picked).
const START_ATTEMPTS: usize = 3;

/// The relayed ports coturn hands out (its defaults, written out so no setting is implicit).
const RELAY_PORTS: (u16, u16) = (49152, 65535);

/// The `turnserver` executable on `PATH`, if there is one.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("turnserver"))
        .find(|p| p.is_file())
}

/// The command line the bench runs `turnserver` with: UDP on `port` of 127.0.0.1 only,
/// relayed addresses on 127.0.0.1, `relay_threads` relay threads, no configuration file (`-n`),
/// no authentication, loopback peers allowed, no TLS, DTLS, TCP, CLI or RFC 5780, no quotas or
/// bandwidth limits, and its log, pid file and user database in `dir`.
pub fn command_line(port: u16, relay_threads: usize, dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut arg = |a: &str| args.push(a.into());
    for a in [
        // No configuration file: every setting is on this line.
        "-n",
        "--listening-ip",
        "127.0.0.1",
        "--relay-ip",
        "127.0.0.1",
        "--listening-port",
        &port.to_string(),
        "--min-port",
        &RELAY_PORTS.0.to_string(),
        "--max-port",
        &RELAY_PORTS.1.to_string(),
        "--relay-threads",
        &relay_threads.max(1).to_string(),
        "--no-auth",
        "--allow-loopback-peers",
        "--no-tls",
        "--no-dtls",
        "--no-tcp",
        "--no-tcp-relay",
        "--no-cli",
        "--no-rfc5780",
        "--user-quota",
        "0",
        "--total-quota",
        "0",
        "--max-bps",
        "0",
        "--no-stdout-log",
        "--simple-log",
    ] {
        arg(a);
    }
    for (flag, file) in [
        ("--log-file", "turnserver.log"),
        ("--pidfile", "turnserver.pid"),
        ("--userdb", "turndb"),
    ] {
        args.push(flag.into());
        args.push(dir.join(file).into_os_string());
    }
    args
}

/// A running `turnserver`.
pub struct Turnserver {
    child: tokio::process::Child,
    /// Where clients reach it (UDP).
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: Option<u32>,
    /// Its relay threads.
    pub relay_threads: usize,
    /// What `turnserver --version` printed, e.g. `4.6.1`.
    pub version: String,
    dir: tempfile::TempDir,
}

impl Turnserver {
    /// Starts `bin` with [`command_line`] on a free loopback port and waits until it answers
    /// a Binding request.
    pub async fn start(bin: &Path, relay_threads: usize) -> anyhow::Result<Turnserver> {
        let version = version(bin).await;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(bin, relay_threads, &version).await {
                Ok(server) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("turnserver did not start")))
    }

    async fn start_once(
        bin: &Path,
        relay_threads: usize,
        version: &str,
    ) -> anyhow::Result<Turnserver> {
        let dir = tempfile::Builder::new()
            .prefix("baton-bench-coturn-")
            .tempdir()
            .context("temporary directory for turnserver")?;
        let port = free_udp_port()?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))
            .context("turnserver's stderr file")?;
        let child = tokio::process::Command::new(bin)
            .args(command_line(port, relay_threads, dir.path()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = Turnserver {
            child,
            addr,
            pid,
            relay_threads,
            version: version.to_owned(),
            dir,
        };
        let probe = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("binding the probe socket")?;
        probe.connect(addr).await.context("connecting the probe")?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if transact(&probe, &Request::Binding).await.is_ok() {
                return Ok(server);
            }
            server.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "turnserver did not answer on {addr} within {START_TIMEOUT:?}; its log ends: {}",
                    server.log_tail()
                );
            }
            // Refused until it listens: do not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An error with the end of its log if it exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "turnserver exited ({status}); its log ends: {} {}",
                self.log_tail(),
                tail(&self.dir.path().join("stderr.log"))
            ),
            Err(e) => Err(e).context("turnserver status"),
        }
    }

    /// The end of its log file.
    fn log_tail(&self) -> String {
        tail(&self.dir.path().join("turnserver.log"))
    }

    /// Its log file (kept until the `Turnserver` is dropped).
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("turnserver.log")
    }

    /// Stops it (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]) and reaps it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// What `bin --version` prints (first line), or `unknown version`.
async fn version(bin: &Path) -> String {
    let run = tokio::process::Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("unknown version")
                .to_owned()
        }
        _ => "unknown version".to_owned(),
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> anyhow::Result<u16> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("finding a free UDP port")?;
    Ok(socket.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_explicit_and_local() {
        let dir = Path::new("/tmp/x");
        let args: Vec<String> = command_line(34780, 2, dir)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let value = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].as_str()
        };
        // No configuration file from /etc.
        assert_eq!(args[0], "-n");
        assert!(!args.iter().any(|a| a == "-c" || a.starts_with("/etc")));
        assert_eq!(value("--listening-ip"), "127.0.0.1");
        assert_eq!(value("--relay-ip"), "127.0.0.1");
        assert_eq!(value("--listening-port"), "34780");
        assert_eq!(value("--relay-threads"), "2");
        assert_eq!(value("--user-quota"), "0");
        assert_eq!(value("--total-quota"), "0");
        assert_eq!(value("--max-bps"), "0");
        assert_eq!(value("--log-file"), "/tmp/x/turnserver.log");
        assert_eq!(value("--pidfile"), "/tmp/x/turnserver.pid");
        assert_eq!(value("--userdb"), "/tmp/x/turndb");
        for flag in [
            "--no-auth",
            "--allow-loopback-peers",
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--no-cli",
            "--no-stdout-log",
            "--simple-log",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing");
        }
        // At least one relay thread.
        let args = command_line(1, 0, dir);
        let i = args.iter().position(|a| a == "--relay-threads").unwrap();
        assert_eq!(args[i + 1], "1");
    }
}
