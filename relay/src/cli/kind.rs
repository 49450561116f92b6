//! What each type of setting means to clap and serde: the [`Kind`] trait, one impl per value
//! type the settings table uses (`SocketAddr`, `PathBuf`, `usize`, `u16`, `Duration`, `bool`, `String`,
//! `LogFormat`, `LevelFilter`, and the markers [`Secret`], [`Toggle`], [`Names`], [`Webhooks`]). The
//! `settings!` macro (`cli/declare.rs`) calls these for every table entry; nothing here knows a
//! setting by name. Runs on the main thread, once, at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{BoolishValueParser, ValueParser};
use clap::{value_parser, Arg, ArgAction, ArgMatches};
use serde::de::DeserializeOwned;
use tracing::level_filters::LevelFilter;

use super::parse::{parse_duration, parse_level, parse_webhook_url, HumanDuration};
use super::LogFormat;
use crate::config::{invalid, ConfigError, Show};
use crate::hooks::Url;

/// How one type of setting is read from the command line and the file, and merged.
pub(crate) trait Kind {
    /// The `Cli` field: `Option<_>`, or `bool` for a flag that takes no value.
    type Arg: Clone + Default + std::fmt::Debug;
    /// The `FileConfig` field, inside an `Option`.
    type File: DeserializeOwned + Clone + std::fmt::Debug;
    /// What the resolver and the setters receive.
    type Value;
    /// The placeholder `--help` shows when the table gives none.
    const VALUE_NAME: &'static str;

    /// Adds the value parser and action to an argument that has its name, flag, env and help.
    fn arg(arg: Arg, value_name: &'static str) -> Arg;
    /// Reads the argument back from clap's matches.
    fn get(matches: &ArgMatches, id: &str) -> Self::Arg;
    /// The command line (with the environment) over the file; a file value that only parses
    /// here (a URL, a log level) is an error naming `key`.
    fn merge(
        key: &'static str,
        arg: Self::Arg,
        file: Option<Self::File>,
    ) -> Result<Option<Self::Value>, ConfigError>;
    /// Makes a relative path in the file relative to the file's directory `base`.
    fn rebase(_file: &mut Option<Self::File>, _base: &Path) {}
}

/// An argument taking one value, parsed by `parser`.
fn single(arg: Arg, value_name: &'static str, parser: impl Into<ValueParser>) -> Arg {
    arg.value_name(value_name)
        .action(ArgAction::Set)
        .value_parser(parser)
}

/// An argument taking a list: the flag repeated, or comma-separated values.
fn listed(arg: Arg, value_name: &'static str, parser: impl Into<ValueParser>) -> Arg {
    arg.value_name(value_name)
        .action(ArgAction::Append)
        .value_delimiter(',')
        .value_parser(parser)
}

/// Types clap parses with `value_parser!` and serde reads as they are: `kind as value =>
/// placeholder`, then any further clap settings.
macro_rules! plain_kind {
    ($($kind:ty as $value:ty => $value_name:literal $(.$extra:ident($($x:expr),*))*;)*) => {$(
        impl Kind for $kind {
            type Arg = Option<$value>;
            type File = $value;
            type Value = $value;
            const VALUE_NAME: &'static str = $value_name;

            fn arg(arg: Arg, value_name: &'static str) -> Arg {
                single(arg, value_name, value_parser!($value))$(.$extra($($x),*))*
            }
            fn get(matches: &ArgMatches, id: &str) -> Self::Arg {
                matches.get_one::<$value>(id).cloned()
            }
            fn merge(
                _key: &'static str,
                arg: Self::Arg,
                file: Option<Self::File>,
            ) -> Result<Option<Self::Value>, ConfigError> {
                Ok(arg.or(file))
            }
        }
    )*};
}
plain_kind! {
    SocketAddr as SocketAddr => "ADDR";
    crate::config::ProbeListen as crate::config::ProbeListen => "auto|off|ADDR";
    usize as usize => "N";
    u16 as u16 => "N";
    LogFormat as LogFormat => "FORMAT";
    String as String => "TEXT";
    // A token or secret: --help never shows its value, even from the environment.
    Secret as String => "TOKEN" .hide_env_values(true);
    // An on/off setting that takes a value, so it can be switched off: `--allow-direct false`.
    Toggle as bool => "BOOL";
}

/// A boolean setting that takes `true` or `false` (unlike a `bool` switch, which can only be
/// turned on), for settings whose default is on.
pub(crate) struct Toggle;

/// A token or secret (`admin_token`, `webhook_secret`, `event_stream_token`): text whose value
/// `--help` never shows.
pub(crate) struct Secret;

impl Kind for PathBuf {
    type Arg = Option<PathBuf>;
    type File = PathBuf;
    type Value = PathBuf;
    const VALUE_NAME: &'static str = "PATH";

    fn arg(arg: Arg, value_name: &'static str) -> Arg {
        single(arg, value_name, value_parser!(PathBuf))
    }
    fn get(matches: &ArgMatches, id: &str) -> Self::Arg {
        matches.get_one::<PathBuf>(id).cloned()
    }
    fn merge(
        _key: &'static str,
        arg: Self::Arg,
        file: Option<Self::File>,
    ) -> Result<Option<Self::Value>, ConfigError> {
        Ok(arg.or(file))
    }
    fn rebase(file: &mut Option<PathBuf>, base: &Path) {
        if let Some(p) = file.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
    }
}

/// Durations with a unit: `10s` on the command line, `"10s"` in the file.
impl Kind for Duration {
    type Arg = Option<Duration>;
    type File = HumanDuration;
    type Value = Duration;
    const VALUE_NAME: &'static str = "DURATION";

    fn arg(arg: Arg, value_name: &'static str) -> Arg {
        single(arg, value_name, ValueParser::new(parse_duration))
    }
    fn get(matches: &ArgMatches, id: &str) -> Self::Arg {
        matches.get_one::<Duration>(id).copied()
    }
    fn merge(
        _key: &'static str,
        arg: Self::Arg,
        file: Option<Self::File>,
    ) -> Result<Option<Self::Value>, ConfigError> {
        Ok(arg.or(file.map(|d| d.0)))
    }
}

/// A switch: `--no-admin`, or `BATON_NO_ADMIN=1`/`true`/`yes` (or `0`/`false`/`off`).
impl Kind for bool {
    type Arg = bool;
    type File = bool;
    type Value = bool;
    const VALUE_NAME: &'static str = "";

    fn arg(arg: Arg, _value_name: &'static str) -> Arg {
        arg.action(ArgAction::SetTrue)
            .value_parser(BoolishValueParser::new())
    }
    fn get(matches: &ArgMatches, id: &str) -> Self::Arg {
        matches.get_flag(id)
    }
    fn merge(
        _key: &'static str,
        arg: Self::Arg,
        file: Option<Self::File>,
    ) -> Result<Option<Self::Value>, ConfigError> {
        Ok(if arg { Some(true) } else { file })
    }
}

/// A log level name; the file's is checked here, so its error names the setting.
impl Kind for LevelFilter {
    type Arg = Option<LevelFilter>;
    type File = String;
    type Value = LevelFilter;
    const VALUE_NAME: &'static str = "LEVEL";

    fn arg(arg: Arg, value_name: &'static str) -> Arg {
        single(arg, value_name, ValueParser::new(parse_level))
    }
    fn get(matches: &ArgMatches, id: &str) -> Self::Arg {
        matches.get_one::<LevelFilter>(id).copied()
    }
    fn merge(
        key: &'static str,
        arg: Self::Arg,
        file: Option<Self::File>,
    ) -> Result<Option<Self::Value>, ConfigError> {
        match (arg, file) {
            (Some(level), _) => Ok(Some(level)),
            (None, Some(s)) => parse_level(&s)
                .map(Some)
                .map_err(|reason| invalid(key, reason)),
            (None, None) => Ok(None),
        }
    }
}

/// A list of names: the flag repeated, comma-separated in the environment, an array in the
/// file. The command line's list replaces the file's.
pub(crate) struct Names;

impl Kind for Names {
    type Arg = Option<Vec<String>>;
    type File = Vec<String>;
    type Value = Vec<String>;
    const VALUE_NAME: &'static str = "NAME";

    fn arg(arg: Arg, value_name: &'static str) -> Arg {
        listed(arg, value_name, value_parser!(String))
    }
    fn get(matches: &ArgMatches, id: &str) -> Self::Arg {
        matches
            .get_many::<String>(id)
            .map(|names| names.cloned().collect())
    }
    fn merge(
        _key: &'static str,
        arg: Self::Arg,
        file: Option<Self::File>,
    ) -> Result<Option<Self::Value>, ConfigError> {
        Ok(arg.or(file))
    }
}

/// Secrets listed like [`Names`] (`auth_secrets`): `--help` never shows their values, even
/// from the environment.
pub(crate) struct SecretList;

impl Kind for SecretList {
    type Arg = Option<Vec<String>>;
    type File = Vec<String>;
    type Value = Vec<String>;
    const VALUE_NAME: &'static str = "SECRET";

    fn arg(arg: Arg, value_name: &'static str) -> Arg {
        Names::arg(arg, value_name).hide_env_values(true)
    }
    fn get(matches: &ArgMatches, id: &str) -> Self::Arg {
        Names::get(matches, id)
    }
    fn merge(
        key: &'static str,
        arg: Self::Arg,
        file: Option<Self::File>,
    ) -> Result<Option<Self::Value>, ConfigError> {
        Names::merge(key, arg, file)
    }
}

/// Webhook URLs, listed like [`Names`]. On the command line a bad URL is a syntax error naming
/// the flag; in the file, an invalid setting naming the key.
pub(crate) struct Webhooks;

impl Kind for Webhooks {
    type Arg = Option<Vec<Url>>;
    type File = Vec<String>;
    type Value = Vec<Url>;
    const VALUE_NAME: &'static str = "URL";

    fn arg(arg: Arg, value_name: &'static str) -> Arg {
        listed(arg, value_name, ValueParser::new(parse_webhook_url))
    }
    fn get(matches: &ArgMatches, id: &str) -> Self::Arg {
        matches
            .get_many::<Url>(id)
            .map(|urls| urls.cloned().collect())
    }
    fn merge(
        key: &'static str,
        arg: Self::Arg,
        file: Option<Self::File>,
    ) -> Result<Option<Self::Value>, ConfigError> {
        if arg.is_some() {
            return Ok(arg);
        }
        file.map(|raw| {
            raw.iter()
                .map(|url| parse_webhook_url(url).map_err(|reason| invalid(key, reason)))
                .collect()
        })
        .transpose()
    }
}

impl Show for LogFormat {
    fn show(&self) -> String {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
        .to_owned()
    }
}

impl Show for LevelFilter {
    /// The name [`parse_level`] reads.
    fn show(&self) -> String {
        self.to_string().to_ascii_lowercase()
    }
}
