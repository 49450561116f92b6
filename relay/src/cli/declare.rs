//! The `settings!` macro that turns the settings table (`cli/table.rs`) into the clap [`Cli`],
//! the serde [`FileConfig`], the merge `Merged` and [`table()`]; and [`Setting`], one row of
//! that table as data, which builds the clap argument and is what tests and the README check
//! read. Compile-time and start-up code only (the main thread).
//!
//! A table entry reads:
//!
//! ```text
//! /// Help text (also the doc of the Cli and FileConfig fields).
//! key: Kind {
//!     flag: "...",          // optional: --key-in-kebab-case otherwise
//!     env: "...",           // optional: BATON_KEY_IN_UPPER_CASE otherwise
//!     value_name: "...",    // optional: the kind's placeholder otherwise
//!     file: skip,           // optional: not a config-file key
//!     default: expr,        // optional: a `defaults::` value, shown through `Show`
//!     range: expr,          // optional: a `defaults::*_RANGE` the setter checks too
//!     apply: relay.set_x,   // optional: the setter called on `Settings` with the value
//! }
//! ```
//!
//! Entries without `apply` are resolved by hand in `cli/resolve.rs`.
//!
//! [`Cli`]: super::Cli
//! [`FileConfig`]: super::FileConfig
//! [`table()`]: super::table

use clap::Arg;

/// One setting as the command line, environment, config file and README name it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Setting {
    /// The config-file key, also clap's argument id: `keepalive_timeout`.
    pub key: &'static str,
    /// The long flag without its dashes: `keepalive-timeout`.
    pub flag: &'static str,
    /// The environment variable: `BATON_KEEPALIVE_TIMEOUT`.
    pub env: &'static str,
    /// Whether the config file takes `key` (`config` itself is command line only).
    pub in_file: bool,
    /// The default as written on the command line (`10s`); `None` when unset by default.
    pub default: Option<String>,
    /// The accepted range (`100ms to 10m`, `at least 1`); `None` when any value parses.
    pub range: Option<String>,
    /// What the setting does, one line, without the range and default.
    pub about: String,
    pub(crate) value_name: &'static str,
    pub(crate) configure: fn(Arg, &'static str) -> Arg,
}

impl Setting {
    /// The `--help` text: what it does, then `[range: ..]` and `[default: ..]` (clap adds
    /// `[env: ..]`).
    pub fn help(&self) -> String {
        let mut help = self.about.clone();
        if let Some(range) = &self.range {
            help.push_str(&format!(" [range: {range}]"));
        }
        if let Some(default) = &self.default {
            help.push_str(&format!(" [default: {default}]"));
        }
        help
    }

    /// The clap argument.
    pub(crate) fn arg(&self) -> Arg {
        let arg = Arg::new(self.key)
            .long(self.flag)
            .env(self.env)
            .help(self.help());
        (self.configure)(arg, self.value_name)
    }
}

/// Doc-comment lines joined into one line, without the final full stop (clap's style).
pub(crate) fn about(doc: &[&str]) -> String {
    let text = doc.join(" ");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.strip_suffix('.').unwrap_or(&text).to_owned()
}

/// `keepalive_timeout` → `keepalive-timeout`, at compile time (clap wants `&'static str`).
pub(crate) const fn kebab<const N: usize>(key: &str) -> [u8; N] {
    let key = key.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if key[i] == b'_' { b'-' } else { key[i] };
        i += 1;
    }
    out
}

/// The environment variable's prefix.
pub(crate) const ENV_PREFIX: &str = "BATON_";

/// `keepalive_timeout` → `BATON_KEEPALIVE_TIMEOUT`, at compile time.
pub(crate) const fn env_name<const N: usize>(key: &str) -> [u8; N] {
    let prefix = ENV_PREFIX.as_bytes();
    let key = key.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < prefix.len() {
            prefix[i]
        } else {
            key[i - prefix.len()].to_ascii_uppercase()
        };
        i += 1;
    }
    out
}

/// The bytes [`kebab`] or [`env_name`] made, as text (they only map ASCII to ASCII).
pub(crate) const fn utf8(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => panic!("setting names are ASCII"),
    }
}

/// The first of its arguments: an override given in the table, else the derived value.
macro_rules! first {
    ($given:expr, $derived:expr) => {
        $given
    };
    ($derived:expr) => {
        $derived
    };
}

/// Declares every setting once; see the module doc for the entry syntax.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $key:ident: $kind:ty {
            $(flag: $flag:literal,)?
            $(env: $env:literal,)?
            $(value_name: $value_name:literal,)?
            $(file: $file:ident,)?
            $(default: $default:expr,)?
            $(range: $range:expr,)?
            $(apply: $($place:ident).+,)?
        }
    )*) => {
        /// Baton relay's command line: every setting as a flag with its environment variable
        /// (see [`table()`]). Parse it with [`clap::Parser`].
        #[derive(Debug, Clone, Default)]
        pub struct Cli {
            $( $(#[doc = $doc])* pub(crate) $key: <$kind as Kind>::Arg, )*
        }

        /// The config file. Every key is optional; unknown keys are errors. The keys are
        /// [`table()`]'s (those `in_file`).
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $( $(#[doc = $doc])* $(#[serde($file)])? pub(crate) $key: Option<<$kind as Kind>::File>, )*
        }

        impl FileConfig {
            /// Makes relative paths relative to `base`, the file's directory.
            pub(crate) fn rebase(&mut self, base: &std::path::Path) {
                $( <$kind as Kind>::rebase(&mut self.$key, base); )*
            }
        }

        /// Every setting after precedence: command line > environment > file; `None` where
        /// none of them set it (the default then stands).
        #[derive(Debug)]
        // `config` is read from the command line before the file it names is loaded.
        #[allow(dead_code)]
        pub(crate) struct Merged {
            $( pub(crate) $key: Option<<$kind as Kind>::Value>, )*
        }

        impl Merged {
            /// Merges `cli` over `file`.
            pub(crate) fn new(cli: &Cli, file: &FileConfig) -> Result<Self, ConfigError> {
                Ok(Merged { $(
                    $key: <$kind as Kind>::merge(
                        stringify!($key),
                        cli.$key.clone(),
                        file.$key.clone(),
                    )?,
                )* })
            }

            /// Calls the setter of every setting the table gives one (`apply:`), in table
            /// order, taking the value.
            pub(crate) fn apply(&mut self, settings: &mut Settings) -> Result<(), ConfigError> {
                $($(
                    if let Some(v) = self.$key.take() {
                        settings $(.$place)+ (v)?;
                    }
                )?)*
                Ok(())
            }
        }

        /// Every setting: its key, flag, environment variable, default, range and help.
        pub fn table() -> Vec<Setting> {
            vec![$(
                Setting {
                    key: stringify!($key),
                    flag: first!($($flag,)? {
                        const KEY: &str = stringify!($key);
                        const FLAG: [u8; KEY.len()] = declare::kebab(KEY);
                        const TEXT: &str = declare::utf8(&FLAG);
                        TEXT
                    }),
                    env: first!($($env,)? {
                        const KEY: &str = stringify!($key);
                        const ENV: [u8; declare::ENV_PREFIX.len() + KEY.len()] =
                            declare::env_name(KEY);
                        const TEXT: &str = declare::utf8(&ENV);
                        TEXT
                    }),
                    in_file: <[&str]>::is_empty(&[$(stringify!($file))?]),
                    default: None $(.or(Some(Show::show(&$default))))?,
                    range: None $(.or(Some(range_text(&$range))))?,
                    about: declare::about(&[$($doc),*]),
                    value_name: first!($($value_name,)? <$kind as Kind>::VALUE_NAME),
                    configure: <$kind as Kind>::arg,
                },
            )*]
        }

        impl clap::CommandFactory for Cli {
            fn command() -> clap::Command {
                table()
                    .iter()
                    .fold(super::command(), |command, setting| command.arg(setting.arg()))
            }
            fn command_for_update() -> clap::Command {
                Self::command()
            }
        }

        impl clap::FromArgMatches for Cli {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Ok(Cli { $( $key: <$kind as Kind>::get(matches, stringify!($key)), )* })
            }
            fn update_from_arg_matches(
                &mut self,
                matches: &clap::ArgMatches,
            ) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(matches)?;
                Ok(())
            }
        }

        impl clap::Parser for Cli {}
    };
}
