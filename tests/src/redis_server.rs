//! A real `redis-server` (or `valkey-server`) child process on loopback for the fleet
//! directory's tests: its own port and temporary directory, no persistence, killed and reaped
//! when dropped. It can be stopped and started again on the same port, to test what the relay
//! does while its directory is gone.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a started server may take to answer `PING`.
const READY_WAIT: Duration = Duration::from_secs(10);

/// Fresh ports tried when the first one is taken before the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// The server binaries looked for on `PATH`, in order.
const BINARIES: [&str; 2] = ["redis-server", "valkey-server"];

/// How a [`RedisServer`] is started beyond the defaults (plain TCP, no password).
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Require this password (`requirepass`); [`RedisServer::url`] carries it.
    pub password: Option<String>,
    /// Serve TLS only, with this certificate and key (PEM); clients are not asked for a
    /// certificate. [`RedisServer::url`] is then `rediss://`.
    pub tls: Option<RedisTls>,
}

/// A TLS server's certificate (also its clients' trust anchor: self-signed) and key, PEM.
#[derive(Clone, Debug)]
pub struct RedisTls {
    /// The certificate, valid for `127.0.0.1`.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// A running Redis-compatible server on `127.0.0.1`.
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    options: RedisOptions,
    child: Option<Child>,
}

/// The first of [`BINARIES`] found on `PATH`.
fn find_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in BINARIES {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "neither redis-server nor valkey-server is on PATH; the fleet directory tests need one: \
         install it (`apt-get install redis-server`)"
    )
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits (at most 10 s) until it answers
    /// `PING`.
    ///
    /// # Errors
    /// If no server binary is on `PATH` (the message says to install `redis-server`), or it
    /// does not start and answer in time.
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::start_with(RedisOptions::default())
    }

    /// Like [`Self::start`], with a password or TLS.
    ///
    /// # Errors
    /// As [`Self::start`], or if the TLS files cannot be written.
    pub fn start_with(options: RedisOptions) -> anyhow::Result<RedisServer> {
        let bin = find_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("baton-redis-")
            .tempdir()
            .context("creating the server's directory")?;
        if let Some(tls) = &options.tls {
            std::fs::write(dir.path().join("cert.pem"), &tls.cert_pem).context("cert.pem")?;
            std::fs::write(dir.path().join("key.pem"), &tls.key_pem).context("key.pem")?;
        }
        let mut server = RedisServer {
            bin,
            port: 0,
            dir,
            options,
            child: None,
        };
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .context(format!("starting {}", server.bin.display()))
    }

    /// The server's URL, database 0: `redis://127.0.0.1:{port}/0` (`rediss://` with TLS, and
    /// `:{password}@` before the host with a password).
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// The server's URL for database `db`.
    pub fn url_db(&self, db: u8) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = match &self.options.password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        format!("{scheme}://{auth}127.0.0.1:{}/{db}", self.port)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Whether the server process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL, as a crash would) and reaps it. Its data is gone: nothing is
    /// persisted. Does nothing if it is stopped already.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs) and waits until
    /// it answers `PING`. It starts empty.
    ///
    /// # Errors
    /// If it does not start and answer in time (e.g. something else took the port).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn_and_wait()
            .with_context(|| format!("restarting {} on port {}", self.bin.display(), self.port))
    }

    /// A synchronous connection for a test to read or write keys directly (e.g. to plant a
    /// corrupt value), with 2 s connect and I/O timeouts.
    ///
    /// # Errors
    /// If the server does not accept a connection.
    pub fn connection(&self) -> anyhow::Result<redis::Connection> {
        let conn = self
            .client()?
            .get_connection_with_timeout(Duration::from_secs(2))
            .context("connecting to the test server")?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.set_write_timeout(Some(Duration::from_secs(2)))?;
        Ok(conn)
    }

    /// A client for [`Self::url`], trusting the server's own certificate with TLS.
    fn client(&self) -> anyhow::Result<redis::Client> {
        let client = match &self.options.tls {
            None => redis::Client::open(self.url()),
            Some(tls) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(tls.cert_pem.clone().into_bytes()),
                },
            ),
        };
        client.context("server URL")
    }

    /// The server's log file.
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The end of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Starts the child on `self.port` and waits until it answers `PING`; kills it if it does
    /// not.
    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("server log file")?;
        let mut command = Command::new(&self.bin);
        if self.options.tls.is_some() {
            let file = |name: &str| self.dir.path().join(name);
            command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(file("cert.pem"))
                .arg("--tls-key-file")
                .arg(file("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(file("cert.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.arg("--port").arg(self.port.to_string());
        }
        if let Some(password) = &self.options.password {
            command.arg("--requirepass").arg(password);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", ""])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("server log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stop();
                Err(e.context(format!("server log:\n{}", self.log_tail())))
            }
        }
    }

    /// Polls with `PING` until the server answers `PONG`, it exits, or [`READY_WAIT`] passes.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("checking the server")? {
                    self.child = None;
                    bail!("the server exited at start-up ({status})");
                }
            }
            if self.ping().is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the server did not answer PING within {READY_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One `PING`, with short timeouts.
    fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self
            .client()?
            .get_connection_with_timeout(Duration::from_millis(200))?;
        conn.set_read_timeout(Some(Duration::from_millis(500)))?;
        let pong: String = redis::cmd("PING").query(&mut conn)?;
        if pong != "PONG" {
            bail!("PING answered {pong:?}");
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
