//! The game client of Baton's tests and tools: an SDK session that hosts an allocation, joins
//! one by code or rejoins with a reconnect token, plays at a game's tick rate, checks every
//! datagram it receives, and reports what happens to it ([`Report`]). Used by `baton-soak`
//! (in-process as a tokio task, or as a `player` child process it may SIGKILL), by
//! `baton-player`, and by [`crate::migration_run`] (`baton-demo`, `baton-migration-bench`).
//!
//! A player process ([`run`]) reports JSON lines on stdout, each stamped with the wall clock
//! in microseconds since the Unix epoch (`t_us`), so a parent process on the same machine can
//! time a migration across processes. In-process ([`play`]), reports go over a channel.
//!
//! Traffic per tick: the host broadcasts; every other member sends to the host, and every
//! `--p2p-every` ticks also straight to another member. Every payload names its game,
//! allocation, sender, destination and sequence ([`payload`]); the receiver checks each one
//! for misdelivery, corruption, duplicates and gaps ([`Report::Violation`], [`Report::Gap`]),
//! and counts ([`Report::Stats`] every `--stats-ms`). After a migration a member reports its
//! first datagram from the new host (`first_from_host`), a new host the first from each
//! member (`first_from_peer`).
//!
//! Snapshots ([`snapshot`]): a host with `--snapshot-bytes N` uploads N bytes of
//! [`crate::snapshot_bytes`] once (`snapshot_stored`); with `--game-snapshots` every host
//! stages a snapshot naming its game now and then, and a new host must get one of its game.
//!
//! Commands on stdin, one per line: `close` (leave cleanly and exit), `fallbacks ADDR,...`
//! (the fleet's nodes to resume through), `snapshot` (upload the
//! snapshot again). End of input closes too. The player also leaves by itself after
//! `--max-secs`.
//!
//! ```text
//! baton-player --relay 127.0.0.1:7700 --fingerprint HEX host --snapshot-bytes 65536
//! baton-player --relay 127.0.0.1:7700 --fingerprint HEX join BCDF78
//! baton-player --relay 127.0.0.1:7700 --fingerprint HEX rejoin ALLOC.PEER.TOKEN
//! ```

pub mod payload;
mod play;
mod receive;
mod report;
pub mod snapshot;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_client::{
    AllocationOptions, ClientConfig, Error, Host, NetworkSimulator, Peer, ReconnectToken, Session,
    Trust,
};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

pub use report::{Command, Report, Sink, MAX_LATENCY_SAMPLES};

/// Attempts at entering a game when the relay answers "rate limited" or "migrating".
const ENTRY_ATTEMPTS: u32 = 10;

/// Command line of a player.
#[derive(Debug, Clone, Parser)]
#[command(about = "A Baton game client reporting its session as JSON lines")]
pub struct PlayerArgs {
    /// The relay's QUIC address.
    #[arg(long)]
    pub relay: SocketAddr,
    /// SHA-256 fingerprint of the relay's certificate, in hex.
    #[arg(long)]
    pub fingerprint: String,
    /// Datagrams per second (the game's tick rate).
    #[arg(long, default_value_t = 60)]
    pub rate: u32,
    /// SDK keepalive interval in milliseconds (must be below the relay's keepalive timeout).
    #[arg(long, default_value_t = 2000)]
    pub keepalive_ms: u64,
    /// Leave by itself after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub max_secs: u64,
    /// The game id every payload carries (stable across host migrations).
    #[arg(long, default_value_t = 0)]
    pub game: u32,
    /// The id of this client instance in every payload (a rejoin is a new one)
    /// [default: from the process id and the clock].
    #[arg(long)]
    pub uid: Option<u64>,
    /// Payload bytes per datagram (at least the header).
    #[arg(long, default_value_t = payload::HEADER_LEN)]
    pub payload: usize,
    /// Send a datagram straight to another member every this many ticks (0: never).
    #[arg(long, default_value_t = 0)]
    pub p2p_every: u64,
    /// Report counters every this many milliseconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub stats_ms: u64,
    /// While host, stage a snapshot naming the game and this client now and then; a new
    /// host must get one of its game.
    #[arg(long)]
    pub game_snapshots: bool,
    /// The lobby-minted credential sent with the create, join or rejoin (a relay started
    /// with `--auth-secret` requires one).
    #[arg(long)]
    pub credential: Option<String>,
    /// Another relay of the fleet to resume through if this one is lost (repeatable;
    /// `ClientConfig::fallback_relays`).
    #[arg(long = "fallback-relay", value_name = "ADDR")]
    pub fallback_relays: Vec<SocketAddr>,
    /// How long a session that lost its relay tries the fallback relays, in milliseconds
    /// (`ClientConfig::resume_window`; 0: the SDK's default).
    #[arg(long, default_value_t = 0)]
    pub resume_window_ms: u64,
    /// The session's idle timeout in milliseconds: a silent relay is lost after this
    /// (`ClientConfig::idle_timeout`; 0: the SDK's default).
    #[arg(long, default_value_t = 0)]
    pub idle_timeout_ms: u64,
    /// Log the SDK's tracing to stderr with this filter (`RUST_LOG` syntax, e.g.
    /// `baton_client=debug`); nothing is logged without it.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Try direct host–peer paths (`ClientConfig::direct(DirectPolicy::Prefer)`); path changes
    /// are reported as `path_changed`.
    #[arg(long)]
    pub direct: bool,
    /// Simulate a bad network on the player's socket (`ClientConfig::network_simulator`), in
    /// `baton_client::NetworkSimulator`'s text form, e.g. `loss=5%,delay=50ms,jitter=10ms`
    /// (both directions; `send-`/`recv-` prefixes for one, `seed=N` for reproducible runs).
    #[arg(long, value_name = "SETTINGS")]
    pub netsim: Option<NetworkSimulator>,
    /// What to be.
    #[command(subcommand)]
    pub role: Role,
}

/// How the client enters the game.
#[derive(Debug, Clone, Subcommand)]
pub enum Role {
    /// Create an allocation and host it.
    Host {
        /// Upload a snapshot of this many bytes (`baton_tests::snapshot_bytes`) once the allocation
        /// exists; 0 uploads none.
        #[arg(long, default_value_t = 0)]
        snapshot_bytes: usize,
    },
    /// Join an allocation by code.
    Join {
        /// The join code.
        code: String,
    },
    /// Come back with a reconnect token (`ALLOC.PEER.TOKEN`).
    Rejoin {
        /// The token.
        token: String,
    },
}

impl PlayerArgs {
    /// The command line that makes a player process run these settings.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--relay".to_owned(),
            self.relay.to_string(),
            "--fingerprint".to_owned(),
            self.fingerprint.clone(),
            "--rate".to_owned(),
            self.rate.to_string(),
            "--keepalive-ms".to_owned(),
            self.keepalive_ms.to_string(),
            "--max-secs".to_owned(),
            self.max_secs.to_string(),
            "--game".to_owned(),
            self.game.to_string(),
            "--payload".to_owned(),
            self.payload.to_string(),
            "--p2p-every".to_owned(),
            self.p2p_every.to_string(),
            "--stats-ms".to_owned(),
            self.stats_ms.to_string(),
        ];
        if let Some(uid) = self.uid {
            args.extend(["--uid".to_owned(), uid.to_string()]);
        }
        if self.game_snapshots {
            args.push("--game-snapshots".to_owned());
        }
        if let Some(credential) = &self.credential {
            args.extend(["--credential".to_owned(), credential.clone()]);
        }
        for relay in &self.fallback_relays {
            args.extend(["--fallback-relay".to_owned(), relay.to_string()]);
        }
        if self.resume_window_ms > 0 {
            args.extend([
                "--resume-window-ms".to_owned(),
                self.resume_window_ms.to_string(),
            ]);
        }
        if self.idle_timeout_ms > 0 {
            args.extend([
                "--idle-timeout-ms".to_owned(),
                self.idle_timeout_ms.to_string(),
            ]);
        }
        if let Some(filter) = &self.log {
            args.extend(["--log".to_owned(), filter.clone()]);
        }
        if self.direct {
            args.push("--direct".to_owned());
        }
        if let Some(simulator) = &self.netsim {
            args.extend(["--netsim".to_owned(), simulator.to_string()]);
        }
        match &self.role {
            Role::Host { snapshot_bytes } => args.extend([
                "host".to_owned(),
                "--snapshot-bytes".to_owned(),
                snapshot_bytes.to_string(),
            ]),
            Role::Join { code } => args.extend(["join".to_owned(), code.clone()]),
            Role::Rejoin { token } => args.extend(["rejoin".to_owned(), token.clone()]),
        }
        args
    }
}

/// Microseconds since the Unix epoch. Every process of a run stamps what it reports with this
/// clock, so their times can be compared on one machine.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Runs a player process: reports on stdout, commands on stdin, until it is told to close,
/// its session ends, or `--max-secs` pass.
///
/// # Errors
/// If the client cannot enter the game (connect, create, join) or upload its snapshot.
pub async fn run(args: PlayerArgs) -> anyhow::Result<()> {
    if let Some(filter) = &args.log {
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .map_err(|e| anyhow::anyhow!("--log {filter}: {e}"))?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }
    let (tx, rx) = mpsc::channel(4);
    let stdin = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        // One iteration per line; ends with stdin or when the player is gone.
        loop {
            let command = match lines.next_line().await {
                Ok(Some(line)) => match Command::parse(&line) {
                    Some(command) => command,
                    None => {
                        Sink::Stdout
                            .send(Report::UnknownCommand { command: line })
                            .await;
                        continue;
                    }
                },
                // End of input or an unreadable stdin: leave.
                _ => Command::Close,
            };
            let close = command == Command::Close;
            if tx.send(command).await.is_err() || close {
                return;
            }
        }
    });
    let result = play(args, Sink::Stdout, rx).await;
    stdin.abort();
    result.map_err(anyhow::Error::msg)
}

/// Runs a player: enters the game, reports [`Report::Ready`] (or [`Report::Fatal`]), uploads
/// the host's snapshot, then plays until told to close (or `commands` closes), its session
/// ends, or `--max-secs` pass.
///
/// # Errors
/// Why the client could not enter the game or upload its snapshot (reported too).
pub async fn play(
    args: PlayerArgs,
    sink: Sink,
    mut commands: mpsc::Receiver<Command>,
) -> Result<(), String> {
    let session = match enter(&args).await {
        Ok(session) => session,
        Err(error) => {
            sink.send(Report::Fatal {
                error: error.clone(),
            })
            .await;
            return Err(error);
        }
    };
    sink.send(Report::Ready {
        peer: session.local_peer().0,
        host: session.host().map(|h| h.0),
        allocation: session.allocation().to_string(),
        code: session.join_code().map(|c| c.to_string()),
        token: session.reconnect_token().to_string(),
        members: session.members().iter().map(|p| p.0).collect(),
    })
    .await;
    let snapshot = match args.role {
        Role::Host { snapshot_bytes } => crate::snapshot_bytes(snapshot_bytes),
        _ => Vec::new(),
    };
    let mut player = play::Player::new(&args, &session, &sink, snapshot);
    if !player.snapshot.is_empty() {
        player.upload_snapshot().await?;
    }
    player.play(&mut commands).await;
    Ok(())
}

/// Connects and binds as `args.role` says, retrying (bounded) while the relay asks to wait.
async fn enter(args: &PlayerArgs) -> Result<Session, String> {
    let trust = Trust::fingerprint_hex(&args.fingerprint).map_err(|e| e.to_string())?;
    let mut config = ClientConfig::new(args.relay, trust)
        .keep_alive_interval(Duration::from_millis(args.keepalive_ms));
    if let Some(credential) = &args.credential {
        config = config.credential(credential.clone());
    }
    if !args.fallback_relays.is_empty() {
        config = config.fallback_relays(args.fallback_relays.clone());
    }
    if args.resume_window_ms > 0 {
        config = config.resume_window(Duration::from_millis(args.resume_window_ms));
    }
    if args.direct {
        config = config.direct(baton_client::DirectPolicy::Prefer);
    }
    if let Some(simulator) = &args.netsim {
        config = config.network_simulator(simulator.clone());
    }
    if args.idle_timeout_ms > 0 {
        config = config.idle_timeout(Duration::from_millis(args.idle_timeout_ms));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match &args.role {
            Role::Host { .. } => Host::create(&config, AllocationOptions::default())
                .await
                .map(Host::into_session),
            Role::Join { code } => Peer::join(&config, code.as_str())
                .await
                .map(Peer::into_session),
            Role::Rejoin { token } => match token.parse::<ReconnectToken>() {
                Ok(token) => Peer::rejoin(&config, &token).await.map(Peer::into_session),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(session) => return Ok(session),
            Err(Error::RateLimited { retry_after } | Error::Migrating { retry_after })
                if attempt < ENTRY_ATTEMPTS =>
            {
                tokio::time::sleep(
                    retry_after.clamp(Duration::from_millis(20), Duration::from_secs(2)),
                )
                .await;
            }
            Err(e) => return Err(format!("{e} (attempt {attempt})")),
        }
    }
}
