//! The ceiling: a plain UDP forwarder doing the relay's job with none of its protocol, so the
//! report can say what fraction of the raw forwarding rate Baton reaches on the same machine in
//! the same run.
//!
//! The forwarder is this same executable started as a child process (`baton-bench
//! udp-forwarder`), so its CPU and memory are measured from `/proc` exactly like the relay's.
//! It is set up as fairly as possible: a tokio multi-thread runtime with as many workers as
//! the relay has (one per CPU), one UDP socket on loopback (the relay's QUIC endpoint is one
//! socket too) with the kernel's default buffer sizes, and one receive loop per worker. Per
//! datagram it does what the relay's data plane does, minus QUIC and TLS: look up the sender by
//! address, look up the destination in the sender's allocation (sorted members, binary search),
//! overwrite the 2-byte header with the sender's peer id, and send, dropping rather than
//! waiting when the socket is full.
//!
//! Clients register first: a datagram with header [`REGISTER`] carrying the allocation and peer
//! id, echoed back as the acknowledgement. After that the datagram format is Baton's (SPEC.md
//! §6): destination header on the way in, source header on the way out.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use baton_protocol::datagram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::net::UdpSocket;

use tokio::task::JoinSet;

use crate::traffic::{Receiver, Shared, Topology};

/// Header of a registration datagram (never a peer id the bench uses).
pub const REGISTER: u16 = 0xFFFE;

/// Registration payload: allocation `u32`, peer id `u16`.
const REGISTER_LEN: usize = datagram::HEADER_LEN + 6;

/// Attempts (100 ms apart) a client makes to register before giving up.
const REGISTER_ATTEMPTS: usize = 30;

/// Who is where.
#[derive(Default)]
struct Routes {
    by_addr: HashMap<SocketAddr, (u32, u16)>,
    /// Members of each allocation, sorted by peer id.
    allocs: HashMap<u32, Vec<(u16, SocketAddr)>>,
}

/// Runs the forwarder (the `udp-forwarder` subcommand): prints `listening <addr>` on stdout,
/// then forwards until stdin closes (the bench exited) or `max_seconds` pass.
pub fn run_forwarder(threads: usize, max_seconds: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("forwarder runtime")?;
    runtime.block_on(async {
        let socket = Arc::new(
            UdpSocket::from_std(crate::sockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?)
                .context("binding the forwarder socket")?,
        );
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {}", socket.local_addr()?)?;
        stdout.flush()?;
        drop(stdout);
        let routes = Arc::new(RwLock::new(Routes::default()));
        for _ in 0..threads.max(1) {
            tokio::spawn(forward_loop(socket.clone(), routes.clone()));
        }
        let stdin_closed = async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            // Bounded: ends at EOF or error; the timeout below bounds it in time too.
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            () = stdin_closed => {}
            () = tokio::time::sleep(Duration::from_secs(max_seconds)) => {}
        }
        anyhow::Ok(())
    })?;
    // Forwarding tasks are mid-`recv`; do not wait for them.
    runtime.shutdown_background();
    Ok(())
}

/// One receive loop: forwards every datagram it gets.
async fn forward_loop(socket: Arc<UdpSocket>, routes: Arc<RwLock<Routes>>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => {
                // Transient (e.g. a queued ICMP error); do not spin on it.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let d = &mut buf[..len];
        let Ok((dest, payload)) = datagram::split(d) else {
            continue;
        };
        if dest == REGISTER {
            if let [a0, a1, a2, a3, p0, p1] = *payload {
                let alloc = u32::from_be_bytes([a0, a1, a2, a3]);
                let peer = u16::from_be_bytes([p0, p1]);
                register(&routes, from, alloc, peer);
                let _ = socket.try_send_to(d, from);
            }
            continue;
        }
        let routes = routes.read().unwrap_or_else(|e| e.into_inner());
        let Some(&(alloc, me)) = routes.by_addr.get(&from) else {
            continue;
        };
        let Some(members) = routes.allocs.get(&alloc) else {
            continue;
        };
        datagram::write_header(d, me);
        if dest == datagram::BROADCAST {
            for (peer, addr) in members {
                if *peer != me {
                    let _ = socket.try_send_to(d, *addr);
                }
            }
        } else if dest != me {
            if let Ok(i) = members.binary_search_by_key(&dest, |(p, _)| *p) {
                let _ = socket.try_send_to(d, members[i].1);
            }
        }
    }
}

/// Records a client's allocation and peer id (idempotent: a repeated registration changes
/// nothing).
fn register(routes: &RwLock<Routes>, from: SocketAddr, alloc: u32, peer: u16) {
    let mut routes = routes.write().unwrap_or_else(|e| e.into_inner());
    if routes.by_addr.insert(from, (alloc, peer)).is_some() {
        return;
    }
    let members = routes.allocs.entry(alloc).or_default();
    if let Err(i) = members.binary_search_by_key(&peer, |(p, _)| *p) {
        members.insert(i, (peer, from));
    }
}

/// The forwarder child process.
pub struct Forwarder {
    child: tokio::process::Child,
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: Option<u32>,
}

impl Forwarder {
    /// Starts `baton-bench udp-forwarder` with `threads` workers, stopping by itself after
    /// `max_seconds`.
    pub async fn start(threads: usize, max_seconds: u64) -> anyhow::Result<Forwarder> {
        Self::start_under(threads, max_seconds, &[]).await
    }

    /// [`Forwarder::start`] under `wrapper` (a program and its arguments, e.g. valgrind's; the
    /// forwarder's command line follows them), which must run it in its own process.
    pub async fn start_under(
        threads: usize,
        max_seconds: u64,
        wrapper: &[OsString],
    ) -> anyhow::Result<Forwarder> {
        let exe = std::env::current_exe().context("locating baton-bench")?;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args).arg(exe);
                cmd
            }
            None => tokio::process::Command::new(exe),
        };
        let start_timeout = Duration::from_secs(if wrapper.is_empty() { 10 } else { 120 });
        let mut child = cmd
            .args([
                "udp-forwarder",
                "--threads",
                &threads.to_string(),
                "--max-seconds",
                &max_seconds.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the UDP forwarder")?;
        let stdout = child.stdout.take().context("forwarder stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            start_timeout,
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .map_err(|_| anyhow!("the UDP forwarder did not start within {start_timeout:?}"))?
        .context("reading the forwarder's address")?;
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| anyhow!("unexpected forwarder output {line:?}"))?
            .parse()
            .context("forwarder address")?;
        let pid = child.id();
        Ok(Forwarder { child, addr, pid })
    }

    /// Stops the forwarder: closing its stdin ends it; it is killed if it lingers.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One receiving task per client socket of [`clients`] (client `g` is `sockets[g]`), each
/// handing what it receives to its [`Receiver`]. They end when aborted, or when the forwarder
/// is gone (a receive fails).
pub fn spawn_receivers(sockets: &[Arc<UdpSocket>], shared: &Arc<Shared>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for (g, socket) in sockets.iter().enumerate() {
        let socket = socket.clone();
        let mut receiver = Receiver::new(shared.clone(), g as u32);
        tasks.spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok(n) = socket.recv(&mut buf).await {
                receiver.on_datagram(&buf[..n]);
            }
        });
    }
    tasks
}

/// One connected UDP socket per client of `allocations × members`, each registered with the
/// forwarder as member `g % members` (its peer id) of allocation `g / members`.
pub async fn clients(
    forwarder: SocketAddr,
    allocations: usize,
    members: usize,
) -> anyhow::Result<(Vec<Arc<UdpSocket>>, Topology)> {
    if !forwarder.ip().is_loopback() {
        bail!("the forwarder must be on loopback");
    }
    let total = allocations * members;
    let mut sockets = Vec::with_capacity(total);
    // Registered in batches: each is one round trip, and the forwarder is local.
    for batch in (0..total).collect::<Vec<_>>().chunks(128) {
        let registered = futures_util::future::join_all(
            batch
                .iter()
                .map(|g| register_client(forwarder, (g / members) as u32, (g % members) as u16)),
        )
        .await;
        for socket in registered {
            sockets.push(Arc::new(socket?));
        }
    }
    let topo = Topology {
        allocations,
        members,
        peer_ids: (0..total).map(|g| (g % members) as u16).collect(),
    };
    Ok((sockets, topo))
}

/// Binds, connects and registers one client socket.
async fn register_client(
    forwarder: SocketAddr,
    alloc: u32,
    peer: u16,
) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::from_std(crate::sockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?)
        .context("binding a UDP client socket")?;
    socket
        .connect(forwarder)
        .await
        .context("connecting to the forwarder")?;
    let mut msg = Vec::with_capacity(REGISTER_LEN);
    msg.extend_from_slice(&REGISTER.to_be_bytes());
    msg.extend_from_slice(&alloc.to_be_bytes());
    msg.extend_from_slice(&peer.to_be_bytes());
    let mut buf = [0u8; 64];
    for _ in 0..REGISTER_ATTEMPTS {
        socket.send(&msg).await.context("registering")?;
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await
        {
            if buf[..n] == msg[..] {
                return Ok(socket);
            }
        }
    }
    bail!("the forwarder did not acknowledge registration")
}
