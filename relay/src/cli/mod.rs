//! The `baton-relay` command line and config file, and their conversion into a
//! [`RelayConfig`].
//!
//! Every setting can come from four places; the later wins:
//! 1. the defaults in [`crate::defaults`];
//! 2. the TOML file named by `--config` / `BATON_CONFIG` (keys are the flag names in
//!    snake_case, durations are strings like `"10s"`, unknown keys are errors, relative paths
//!    are relative to the file);
//! 3. the environment (`BATON_LISTEN`, ...);
//! 4. the command line.
//!
//! ## Settings are declared once
//! Each setting is one entry of the table in `cli/table.rs`, read by the `settings!` macro
//! (`cli/declare.rs`). From it come the clap [`Cli`] (flag, environment variable, `--help`
//! text with the default and the accepted range), the serde [`FileConfig`] (the TOML key),
//! the merge in [`resolve`], and [`table()`], which tests use to check `--help`, README's
//! configuration table and `deploy/config.example.toml` against the code. Defaults and ranges
//! are `defaults::` constants, which `RelayConfig`'s validating setters check too, so a range
//! check lives in one place and every error names the setting.
//!
//! Why a `macro_rules!` table and not figment or another layered-config crate: figment under
//! clap would still need the clap struct, a serde struct and the defaults declared
//! separately; the table makes each setting one entry, adds no dependency, and lets tests
//! iterate every setting.
//!
//! Modules: `table` (the settings), `declare` (the macro and [`Setting`]), `kind` (how each
//! value type is parsed and merged), `resolve` (the settings that interact), `parse` (duration,
//! level and URL parsers), `credential` (the `baton-relay credential` subcommand, which mints a
//! client credential). All of it runs once, on the main thread, before the relay starts.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::Deserialize;
use tracing::level_filters::LevelFilter;

use crate::config::{ConfigError, RelayConfig};
use crate::defaults;

pub mod credential;
#[macro_use]
mod declare;
mod kind;
mod parse;
mod resolve;
mod table;

pub use declare::Setting;
pub use parse::{parse_duration, parse_level, parse_webhook_url, HumanDuration};
pub use resolve::resolve;
pub use table::{table, Cli, FileConfig};

/// Where the development certificate is kept when no `data_dir` is given.
pub const DEFAULT_DATA_DIR: &str = defaults::DATA_DIR;

/// Why the command line or config file could not be turned into settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The config file named on the command line could not be read (a missing file is an
    /// error, never silent defaults).
    #[error("reading config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has an unknown key or a badly typed value.
    #[error("config file {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        source: toml::de::Error,
    },
    /// A setting is out of range or conflicts with another.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Everything the binary needs: the relay's configuration and how to log.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The relay configuration.
    pub relay: RelayConfig,
    /// Log output format.
    pub log_format: LogFormat,
    /// Default log level; `RUST_LOG` directives refine it.
    pub log_level: LevelFilter,
}

/// The command without its arguments, which [`Cli`] adds from the table.
fn command() -> clap::Command {
    clap::Command::new("baton-relay")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Baton relay: a QUIC relay for client-hosted multiplayer games")
        .long_about(
            "Baton relay: a QUIC relay for client-hosted multiplayer games.\n\n\
             Hosts open allocations and get a join code; peers join by code; the relay forwards \
             datagrams between members and tells everyone when someone leaves, and why.",
        )
        .after_help(
            "Precedence: built-in defaults < config file < environment < command line.\n\
             Durations take a unit: 500ms, 10s, 2m, 1h, 1d (combinations like 1m30s work).\n\
             RUST_LOG directives, when set, refine --log-level (e.g. RUST_LOG=quinn=debug).",
        )
        .subcommand(credential::command())
}

/// Reads the config file named in `cli`, if any, and resolves the settings.
pub fn settings(cli: &Cli) -> Result<Settings, CliError> {
    let file = match &cli.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    resolve(cli, file)
}

/// Reads and parses a config file. Relative paths in it are made relative to the file's
/// directory, so a config next to its certificate works from any working directory.
pub fn load_file(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut file: FileConfig = toml::from_str(&text).map_err(|source| CliError::Parse {
        path: path.to_owned(),
        source,
    })?;
    file.rebase(path.parent().unwrap_or(Path::new("")));
    Ok(file)
}

#[cfg(test)]
mod tests;
