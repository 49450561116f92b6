//! One host migration, end to end with real processes, timed: the orchestration shared by
//! `baton-demo` and `baton-migration-bench`.
//!
//! The relay runs in this process ([`LocalRelay`]); the host and its peers are game clients in
//! their own OS processes: this same executable re-run with the hidden [`PLAYER_SUBCOMMAND`]
//! (see [`player_main_if_requested`] and [`crate::player`]), so no other binary has to be built.
//!
//! Flow of [`run_migration`]:
//! 1. start the host and wait for its allocation (and its snapshot, if it uploads one);
//! 2. start the peers with the join code and wait until the host has seen each of them join;
//! 3. let everyone play for [`Scenario::settle`] (so the relay has measured each member's RTT,
//!    which the election uses);
//! 4. end the host: `close` on its stdin ([`HostEnd::Clean`]) or SIGKILL ([`HostEnd::Crash`]);
//! 5. read the reports until every remaining member has lost the host, the new host has taken
//!    over, every other member has moved, and datagrams flow both ways between the new host and
//!    each member ([`Timeline::is_complete`]);
//! 6. optionally bring the old host back with its reconnect token, as an ordinary peer;
//! 7. close every player, and kill what has not exited after a grace period.
//!
//! Clocks: players stamp each report with the wall clock in microseconds since the Unix epoch,
//! and this process stamps the moment it ends the host with the same clock, so intervals across
//! processes on one machine are comparable.
//!
//! Concurrency: one reader task per child pipe forwards lines into one bounded channel, owned
//! (with the tasks, in a `JoinSet`) by a [`Fleet`], which also owns every child process (killed
//! when dropped). The runner consumes the channel in one place. Every wait has a deadline.

//!
//! Files: [`relay`] (the in-process relay), [`fleet`] (the player processes and their
//! reports), [`timeline`] (what a run measured), [`run`] (the phases).

mod fleet;
mod relay;
mod run;
mod timeline;

use std::ffi::OsStr;
use std::future::Future;

use anyhow::Context;
use clap::Parser;

use crate::player::PlayerArgs;

pub use fleet::{Fleet, Output, PlayerSettings, Report};
pub use relay::{LocalRelay, RelaySettings};
pub use run::{run_migration, HostEnd, Note, Scenario};
pub use timeline::{Figures, RejoinTimeline, Timeline};

/// First argument that makes this executable a player process instead of the program itself.
pub const PLAYER_SUBCOMMAND: &str = "player";

/// If this process was started as `<exe> player ARGS...`, runs the player described by `ARGS`
/// (the [`PlayerArgs`] command line) on a single-threaded runtime and returns its result;
/// otherwise `None`. Call it first thing in `main`.
pub fn player_main_if_requested() -> Option<anyhow::Result<()>> {
    let mut args = std::env::args_os();
    let exe = args.next()?;
    if args.next().as_deref() != Some(OsStr::new(PLAYER_SUBCOMMAND)) {
        return None;
    }
    let parsed = match PlayerArgs::try_parse_from(std::iter::once(exe).chain(args)) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    Some(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("player runtime")
            .and_then(|rt| rt.block_on(crate::player::run(parsed))),
    )
}

/// Microseconds since the Unix epoch: the clock players stamp their reports with.
pub use crate::player::now_us;

/// The `main` of a program that runs migrations: a player process if it was started as one
/// ([`player_main_if_requested`]), else `program()` on a multi-threaded runtime.
///
/// # Errors
/// The player's or the program's error, or a runtime that cannot start.
pub fn tool_main<F>(program: impl FnOnce() -> F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    if let Some(result) = player_main_if_requested() {
        return result;
    }
    let program = program();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?
        .block_on(program)
}
