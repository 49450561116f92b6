//! `baton-relay`: parses the command line and config file, sets up logging and runs the relay
//! library until SIGINT or SIGTERM, then shuts down gracefully (a fleet node drains first on
//! SIGTERM, for `--drain-timeout`), or until a drain begun through the admin API has emptied
//! the node. Everything else lives in the
//! library (see `baton_relay::cli` for the settings and their precedence).

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use baton_relay::cli::{self, Cli, LogFormat};
use baton_relay::tls::fingerprint_hex;
use baton_relay::Relay;
use clap::{CommandFactory, FromArgMatches};
use tracing::level_filters::LevelFilter;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// jemalloc, with its background purging thread enabled at start-up, hands freed pages back to
/// the kernel within seconds, so the relay's RSS falls back after a crowd of clients leaves.
/// glibc's allocator kept the peak for good (measured by `baton-bench idle`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    if let Some((cli::credential::NAME, sub)) = matches.subcommand() {
        let args = cli::credential::args(sub)?;
        let text = cli::credential::mint(&args, baton_relay::auth::unix_now())?;
        println!("{text}");
        return Ok(());
    }
    let settings = cli::settings(&Cli::from_arg_matches(&matches)?)?;
    init_tracing(settings.log_format, settings.log_level)?;
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        warn!(cause = %e, "jemalloc background purging unavailable; freed memory returns more slowly");
    }

    // Listen for signals before binding, so a stop request during start-up is not lost.
    let mut signals = Signals::new().context("installing signal handlers")?;

    let admin_exposed = settings
        .relay
        .admin_listen
        .is_some_and(|a| !a.ip().is_loopback());
    if admin_exposed && settings.relay.admin_token.is_none() {
        warn!(
            admin = ?settings.relay.admin_listen,
            "admin API listens beyond loopback without a token; set --admin-token"
        );
    }

    let fleet_node = settings.relay.fleet.is_some();
    let drain_timeout = settings.relay.drain_timeout();
    let relay = Relay::bind(settings.relay)
        .await
        .map_err(|e| anyhow::anyhow!("starting the relay: {e}"))?;

    let quic = relay.local_addr();
    let fingerprint = fingerprint_hex(&relay.fingerprint());
    info!(
        quic = %quic,
        admin = %relay.admin_addr().map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
        cert = %relay.cert_path().display(),
        fingerprint = %fingerprint,
        "relay running"
    );
    info!(
        "try it: cargo run -p baton-client --example host -- --relay {} --fingerprint {}",
        reachable(quic),
        fingerprint
    );

    // Runs until a signal, or until a drain begun through the admin API has emptied the node.
    let handle = relay.handle();
    let signal = tokio::select! {
        signal = signals.next() => Some(signal),
        () = drained(&handle) => None,
    };
    match signal {
        Some("SIGTERM") if fleet_node && !drain_timeout.is_zero() => {
            // A rolling upgrade or scale-in: move every allocation to another node first.
            match handle.drain().await {
                Ok(left) => info!(allocations = left, timeout = ?drain_timeout, "draining"),
                Err(e) => warn!(cause = %e, "cannot drain; stopping now"),
            }
            tokio::select! {
                () = drained(&handle) => info!("drained"),
                () = tokio::time::sleep(drain_timeout) => {
                    let left = handle.drain_state().await.map(|(_, n)| n).unwrap_or(0);
                    warn!(allocations = left, "drain timeout; stopping with allocations left");
                }
                signal = signals.next() => warn!(signal, "second signal while draining; stopping now"),
            }
        }
        Some(signal) => info!(signal, "shutting down"),
        None => info!("drained; shutting down"),
    }
    tokio::select! {
        () = relay.shutdown() => {}
        signal = signals.next() => {
            warn!(signal, "second signal during shutdown; exiting now");
            std::process::exit(130);
        }
    }
    info!("relay stopped");
    Ok(())
}

/// Returns once this node drains and holds no allocation (never on a node that is not
/// draining).
async fn drained(handle: &baton_relay::RelayHandle) {
    loop {
        match handle.drain_state().await {
            Ok((true, 0)) => return,
            Ok(_) => {}
            // The control task is gone: nothing left to drain.
            Err(_) => return,
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Logs to stdout as text or JSON. `level` is the default; `RUST_LOG` directives refine it.
fn init_tracing(format: LogFormat, level: LevelFilter) -> anyhow::Result<()> {
    let filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env()
        .context("invalid RUST_LOG")?;
    // Colour only on a terminal: journald and container logs would keep the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))
}

/// The error and its causes on one line, skipping causes the message already includes.
fn report(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

/// An address a client on this machine can use for `addr` (the wildcard is not one).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}
