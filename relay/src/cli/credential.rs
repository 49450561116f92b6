//! `baton-relay credential`: mints a client credential (SPEC section 16) with a secret the relay
//! is started with, for scripts, tests and lobbies that shell out. Lobbies in other languages
//! mint their own (the README has a Python example); this is the reference.
//!
//! Pure apart from reading the clock: [`mint`] turns the parsed arguments into the text.

use std::time::Duration;

use baton_protocol::credential::{self, Claims, Scope};
use baton_protocol::{AllocationId, JoinCode};
use clap::{Args, FromArgMatches};

use super::parse::parse_duration;

/// The subcommand's name.
pub const NAME: &str = "credential";

/// Print a client credential signed with an auth secret (for scripts and tests).
#[derive(Debug, Clone, Args)]
pub struct CredentialArgs {
    /// Secret to sign with: one of the relay's --auth-secret values (at least 32 bytes).
    /// Prefer the environment variable: command lines are visible to other users.
    #[arg(long, env = "BATON_CREDENTIAL_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Who the credential is for: the player's id in the lobby (1-64 bytes, no control
    /// characters). The relay shows it in logs, lobby events and the admin API.
    #[arg(long)]
    pub subject: String,
    /// What it permits: `create`, `any`, `code:<JOIN CODE>` or `allocation:<16 hex digits>`.
    #[arg(long, value_parser = parse_scope)]
    pub scope: Scope,
    /// How long it is valid from now, e.g. 10m, 2h, 1d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// The subcommand, for `baton-relay --help` and parsing.
pub fn command() -> clap::Command {
    CredentialArgs::augment_args(
        clap::Command::new(NAME)
            .about("Print a client credential signed with an auth secret (for scripts and tests)"),
    )
}

/// Parses the subcommand's matches.
pub fn args(matches: &clap::ArgMatches) -> Result<CredentialArgs, clap::Error> {
    CredentialArgs::from_arg_matches(matches)
}

/// Mints the credential `args` describe, expiring `args.ttl` after unix time `now`.
pub fn mint(args: &CredentialArgs, now: u64) -> Result<String, credential::MintError> {
    let claims = Claims {
        expires: now.saturating_add(args.ttl.as_secs()),
        subject: args.subject.clone(),
        scope: args.scope,
    };
    credential::mint(args.secret.as_bytes(), &claims)
}

/// Parses `create`, `any`, `code:BCDF78` or `allocation:0011223344556677`.
fn parse_scope(s: &str) -> Result<Scope, String> {
    let s = s.trim();
    match s.split_once(':') {
        None if s == "create" => Ok(Scope::Create),
        None if s == "any" => Ok(Scope::Any),
        Some(("code", code)) => JoinCode::parse(code)
            .map(Scope::JoinCode)
            .map_err(|e| format!("invalid join code: {e}")),
        Some(("allocation", id)) if id.len() == 16 => u64::from_str_radix(id, 16)
            .map(|id| Scope::Allocation(AllocationId(id)))
            .map_err(|_| "an allocation id is 16 hex digits".to_owned()),
        _ => Err("use create, any, code:<JOIN CODE> or allocation:<16 hex digits>".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<CredentialArgs, clap::Error> {
        let matches = command()
            .try_get_matches_from(std::iter::once("credential").chain(args.iter().copied()))?;
        super::args(&matches)
    }

    #[test]
    fn mints_what_the_relay_verifies() {
        let secret = "s".repeat(32);
        let args = parse(&[
            "--secret",
            &secret,
            "--subject",
            "player-7",
            "--scope",
            "code:bcdf78",
            "--ttl",
            "10m",
        ])
        .unwrap();
        let text = mint(&args, 1_000).unwrap();
        let claims = credential::verify(&text, &[secret.as_bytes()], 1_000).unwrap();
        assert_eq!(claims.expires, 1_600);
        assert_eq!(claims.subject, "player-7");
        assert_eq!(
            claims.scope,
            Scope::JoinCode(JoinCode::parse("BCDF78").unwrap())
        );
    }

    #[test]
    fn scopes_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_scope("create"), Ok(Scope::Create));
        assert_eq!(parse_scope("any"), Ok(Scope::Any));
        assert_eq!(
            parse_scope("allocation:0011223344556677"),
            Ok(Scope::Allocation(AllocationId(0x0011_2233_4455_6677)))
        );
        for bad in [
            "",
            "all",
            "code:AEIOU1",
            "allocation:12",
            "allocation:zz11223344556677",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad}");
        }
        let short = parse(&["--secret", "short", "--subject", "p", "--scope", "any"]).unwrap();
        assert!(mint(&short, 0).is_err());
        assert!(
            parse(&["--secret", "x", "--subject", "p"]).is_err(),
            "scope is required"
        );
    }
}
