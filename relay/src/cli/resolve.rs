//! [`resolve`]: the command line (with its environment) and the config file into [`Settings`].
//! The table's `apply:` setters handle settings that stand alone; the few that interact keep a
//! small resolver each here: [`network`] (listen, admin_listen/no_admin, admin_token), [`tls`]
//! (cert/key/data_dir/dev_cert_names), [`hooks`] (webhooks with their secret, the backoff pair,
//! the event stream token), [`fleet`] (the directory and this node's place in the fleet,
//! admin_advertise included) and the log settings. Runs on the main thread at start-up.

use std::path::PathBuf;

use super::table::{Cli, FileConfig, Merged};
use super::{CliError, Settings};
use crate::auth::AuthSecrets;
use crate::config::{invalid, ConfigError, RelayConfig, TlsSource};
use crate::defaults;

/// Turns the command line (with its environment) and the config file into [`Settings`]: the
/// command line wins over the environment, the environment over the file, the file over the
/// defaults.
pub fn resolve(cli: &Cli, file: FileConfig) -> Result<Settings, CliError> {
    let mut m = Merged::new(cli, &file)?;
    let mut settings = Settings {
        relay: RelayConfig::default(),
        log_format: m.log_format.take().unwrap_or(defaults::LOG_FORMAT),
        log_level: m.log_level.take().unwrap_or(defaults::LOG_LEVEL),
    };
    network(cli, &mut m, &mut settings.relay)?;
    tls(&mut m, &mut settings.relay)?;
    m.apply(&mut settings)?;
    hooks(&mut m, &mut settings.relay)?;
    fleet(&mut m, &mut settings.relay)?;
    Ok(settings)
}

/// Fleet mode: the directory and this node's place in the fleet, all or nothing.
fn fleet(m: &mut Merged, relay: &mut RelayConfig) -> Result<(), ConfigError> {
    let node_id = m.node_id.take();
    let public_addr = m.public_addr.take();
    let fleet_secret = m.fleet_secret.take();
    let server_name = m.server_name.take();
    let region = m.region.take();
    let admin_advertise = m.admin_advertise.take();
    let Some(directory) = m.directory.take() else {
        for (key, set) in [
            ("node_id", node_id.is_some()),
            ("admin_advertise", admin_advertise.is_some()),
            ("public_addr", public_addr.is_some()),
            ("fleet_secret", fleet_secret.is_some()),
            // Their defaults are what a relay standing alone has anyway.
            (
                "server_name",
                server_name.is_some_and(|n| n != defaults::SERVER_NAME),
            ),
            ("region", region.is_some_and(|r| r != defaults::REGION)),
        ] {
            if set {
                return Err(invalid(key, "is only used with directory"));
            }
        }
        return Ok(());
    };
    if !(directory.starts_with("redis://") || directory.starts_with("rediss://")) {
        return Err(invalid("directory", "must be a redis:// or rediss:// URL"));
    }
    let node_id = node_id.ok_or_else(|| invalid("node_id", "is required with directory"))?;
    crate::directory::NodeId::parse(&node_id).map_err(|e| invalid("node_id", e.to_string()))?;
    // Port 0 stands for the port the relay binds.
    let public_addr = match public_addr {
        Some(addr) if addr.ip().is_unspecified() => {
            return Err(invalid("public_addr", "must name one address"))
        }
        Some(addr) => addr,
        None if !relay.listen.ip().is_unspecified() => relay.listen,
        None => {
            return Err(invalid(
                "public_addr",
                "is required with directory when listen is a wildcard address",
            ))
        }
    };
    let fleet_secret =
        fleet_secret.ok_or_else(|| invalid("fleet_secret", "is required with directory"))?;
    if fleet_secret.len() < defaults::MIN_FLEET_SECRET {
        return Err(invalid(
            "fleet_secret",
            format!("must be at least {} bytes", defaults::MIN_FLEET_SECRET),
        ));
    }
    let server_name = server_name.unwrap_or_else(|| defaults::SERVER_NAME.to_owned());
    if !baton_protocol::server_name::is_valid(&server_name) {
        return Err(invalid(
            "server_name",
            "must be a DNS name or an IP address, 1-253 bytes",
        ));
    }
    let region = region.unwrap_or_else(|| defaults::REGION.to_owned());
    crate::directory::check_region(&region).map_err(|e| {
        invalid(
            "region",
            format!("must be 1-64 characters of A-Z a-z 0-9 . _ - ({e})"),
        )
    })?;
    if let Some(addr) = &admin_advertise {
        if relay.admin_listen.is_none() {
            return Err(invalid(
                "admin_advertise",
                "is set but the admin server is disabled (no_admin)",
            ));
        }
        crate::directory::check_admin_addr(addr)
            .map_err(|e| invalid("admin_advertise", format!("must be HOST:PORT: {e}")))?;
    }
    relay.admin_advertise = admin_advertise;
    relay.fleet = Some(crate::config::FleetConfig {
        directory,
        node_id,
        public_addr,
        server_name,
        region,
        fleet_secret,
    });
    Ok(())
}

/// The QUIC address, the admin server and its token.
fn network(cli: &Cli, m: &mut Merged, relay: &mut RelayConfig) -> Result<(), ConfigError> {
    if let Some(listen) = m.listen.take() {
        relay.listen = listen;
    }

    // Admin server: a choice on the command line or in the environment (either way) overrides
    // the file's; --no-admin wins over --admin-listen so it can switch off an inherited address.
    relay.admin_listen = if cli.no_admin {
        None
    } else if let Some(addr) = cli.admin_listen {
        Some(addr)
    } else {
        // Neither is on the command line: what is merged is the file's.
        match (m.no_admin.unwrap_or(false), m.admin_listen) {
            (true, Some(_)) => {
                return Err(invalid(
                    "no_admin",
                    "conflicts with admin_listen; set one of them",
                ))
            }
            (true, None) => None,
            (false, addr) => Some(addr.unwrap_or(defaults::ADMIN_LISTEN)),
        }
    };

    relay.auth_secrets = AuthSecrets::new(m.auth_secrets.take().unwrap_or_default())?;
    relay.admin_token = m.admin_token.take();
    if let Some(token) = &relay.admin_token {
        if token.trim().is_empty() {
            return Err(invalid("admin_token", "must not be empty"));
        }
        if relay.admin_listen.is_none() {
            return Err(invalid(
                "admin_token",
                "is set but the admin server is disabled (no_admin)",
            ));
        }
    }
    Ok(())
}

/// The certificate: PEM files, or the development certificate and its extra names.
fn tls(m: &mut Merged, relay: &mut RelayConfig) -> Result<(), ConfigError> {
    let dev_names = m.dev_cert_names.take().unwrap_or_default();
    if dev_names.iter().any(|n| n.trim().is_empty()) {
        return Err(invalid("dev_cert_names", "names must not be empty"));
    }
    relay.tls = match (m.cert.take(), m.key.take()) {
        (Some(cert), Some(key)) => {
            if !dev_names.is_empty() {
                return Err(invalid(
                    "dev_cert_names",
                    "only applies to the development certificate, not to cert/key",
                ));
            }
            TlsSource::Pem { cert, key }
        }
        (None, None) => TlsSource::SelfSigned {
            data_dir: m
                .data_dir
                .take()
                .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR)),
            extra_names: dev_names,
        },
        (Some(_), None) => return Err(invalid("key", "cert is set but key is not; give both")),
        (None, Some(_)) => return Err(invalid("cert", "key is set but cert is not; give both")),
    };
    Ok(())
}

/// The lobby hook settings that come in pairs: webhooks and their secret, the backoff's
/// first and longest delay; and the event stream token, served by the admin server.
fn hooks(m: &mut Merged, relay: &mut RelayConfig) -> Result<(), ConfigError> {
    let hooks = &mut relay.hooks;
    let webhooks = m.webhooks.take().unwrap_or_default();
    match (webhooks.is_empty(), m.webhook_secret.take()) {
        (true, None) => {}
        (false, None) => {
            return Err(invalid(
                "webhook_secret",
                "is required when a webhook is set (it signs the requests)",
            ))
        }
        (_, Some(secret)) => {
            hooks.set_webhooks(webhooks, secret)?;
        }
    }
    let (initial, max) = (
        m.webhook_backoff_initial.take(),
        m.webhook_backoff_max.take(),
    );
    if initial.is_some() || max.is_some() {
        let initial = initial.unwrap_or(hooks.backoff_initial());
        let max = max.unwrap_or(hooks.backoff_max());
        hooks.set_backoff(initial, max)?;
    }
    hooks.set_stream_token(m.event_stream_token.take())?;
    if relay.hooks.stream_token().is_some() && relay.admin_listen.is_none() {
        return Err(invalid(
            "event_stream_token",
            "is set but the admin server, which serves the stream, is disabled (no_admin)",
        ));
    }
    Ok(())
}
