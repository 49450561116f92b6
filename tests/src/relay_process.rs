//! Helpers for programs that run `baton-relay` as a child process (`baton-bench`,
//! `baton-soak`): finding the binary, its data directory and log files, reading its start-up
//! line and its logs, and parsing its `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// A relay child's throw-away data directory, with the files its stdout (its log) and stderr
/// go to.
pub struct DataDir {
    /// The directory (removed when dropped).
    pub dir: tempfile::TempDir,
    /// `relay.log` in it: the relay's stdout.
    pub log_path: PathBuf,
    /// `relay.err` in it: the relay's stderr.
    pub err_path: PathBuf,
}

impl DataDir {
    /// A fresh directory named `prefix...` with `relay.log` and `relay.err` created in it;
    /// returns it with those two files, to hand to the child as stdout and stderr.
    ///
    /// # Errors
    /// If the directory or a file cannot be created.
    pub fn create(prefix: &str) -> anyhow::Result<(DataDir, std::fs::File, std::fs::File)> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating the relay's data directory")?;
        let log_path = dir.path().join("relay.log");
        let err_path = dir.path().join("relay.err");
        let stdout = std::fs::File::create(&log_path).context("relay log file")?;
        let stderr = std::fs::File::create(&err_path).context("relay stderr file")?;
        let data = DataDir {
            dir,
            log_path,
            err_path,
        };
        Ok((data, stdout, stderr))
    }
}

/// `baton-relay` next to the running executable (cargo builds both into the same
/// `target/<profile>`); `me` names the running program in errors.
///
/// # Errors
/// If the executable cannot be located or no relay binary is beside it.
pub fn relay_bin_beside_this_exe(me: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().with_context(|| format!("locating {me}"))?;
    let bin = exe
        .parent()
        .with_context(|| format!("{me} has no parent directory"))?
        .join(format!("baton-relay{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p baton-relay -p baton-tests` \
             or name one with --relay-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// What a relay process announced in its `relay running` log line.
#[derive(Debug, Clone)]
pub struct Running {
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its admin server's address, unless disabled.
    pub admin: Option<SocketAddr>,
    /// Its certificate (PEM).
    pub cert: PathBuf,
    /// Its certificate's SHA-256 fingerprint, colon-separated hex.
    pub fingerprint: String,
}

/// Waits until the relay `child` (started from `bin`, logging JSON to `log` and errors to
/// `err`) announces it is running, at most `timeout`.
///
/// # Errors
/// If the relay exits first, says nothing in time, or its line lacks a field.
pub async fn wait_until_running(
    child: &mut tokio::process::Child,
    bin: &Path,
    log: &Path,
    err: &Path,
    timeout: Duration,
) -> anyhow::Result<Running> {
    let started = Instant::now();
    let running = loop {
        if let Some(line) = find_running_line(log) {
            break line;
        }
        if let Some(status) = child.try_wait().context("waiting for the relay")? {
            bail!(
                "{} exited with {status} before it was ready: {}",
                bin.display(),
                tail(err)
            );
        }
        if started.elapsed() > timeout {
            bail!(
                "{} printed no `relay running` line within {timeout:?}: {}",
                bin.display(),
                tail(err)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fields = running
        .get("fields")
        .context("relay log line without fields")?;
    let field = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .with_context(|| format!("relay log line without {name}"))
    };
    Ok(Running {
        quic: field("quic")?.parse().context("relay QUIC address")?,
        // "disabled" when the relay runs without its admin server.
        admin: field("admin")?.parse().ok(),
        cert: PathBuf::from(field("cert")?),
        fingerprint: field("fingerprint")?.to_owned(),
    })
}

/// The relay's `relay running` JSON log line in `log`, once written.
pub fn find_running_line(log: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("relay running"))
        .find_map(|l| serde_json::from_str(l).ok())
}

/// The last few hundred bytes of a file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(600);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].trim().to_owned()
}

/// Parsed Prometheus text: each sample's name with labels
/// (`baton_datagrams_dropped_total{reason="congested"}`) and its value.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: BTreeMap<String, f64>,
}

impl Metrics {
    /// Parses the Prometheus/OpenMetrics text format, skipping comments and anything
    /// unreadable.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.trim().rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Metrics { samples }
    }

    /// A sample's value, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.samples.get(name).copied()
    }

    /// A sample's value, 0 if absent (counters not yet incremented are absent).
    pub fn value(&self, name: &str) -> f64 {
        self.get(name).unwrap_or(0.0)
    }

    /// Every sample whose name starts with one of `prefixes` and whose value differs from
    /// `earlier`'s, with the change, in name order.
    pub fn changed_since(&self, earlier: &Metrics, prefixes: &[&str]) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|(name, _)| prefixes.iter().any(|p| name.starts_with(p)))
            .map(|(name, value)| (name.clone(), value - earlier.value(name)))
            .filter(|(_, delta)| *delta != 0.0)
            .collect()
    }

    /// Every sample of family `family` with label `label`, keyed by the label's value,
    /// leaving out zeros.
    pub fn by_label(&self, family: &str, label: &str) -> BTreeMap<String, u64> {
        self.delta_by_label(&Metrics::default(), family, label)
    }

    /// The upper bound of the highest bucket of histogram `family` that gained an observation
    /// since `earlier` (`f64::INFINITY` for the `+Inf` bucket), or `None` if none did: the
    /// largest value observed in between, rounded up to its bucket.
    pub fn histogram_max_since(&self, earlier: &Metrics, family: &str) -> Option<f64> {
        let count = format!("{family}_count");
        let observed = self.value(&count) - earlier.value(&count);
        if observed <= 0.0 {
            return None;
        }
        // Buckets are cumulative: the first whose change holds every new observation.
        self.delta_by_label(earlier, &format!("{family}_bucket"), "le")
            .into_iter()
            .filter(|(_, delta)| *delta as f64 >= observed)
            .filter_map(|(le, _)| match le.as_str() {
                "+Inf" => Some(f64::INFINITY),
                le => le.parse::<f64>().ok(),
            })
            .min_by(f64::total_cmp)
    }

    /// `self - earlier` for every sample of family `family` with label `label`, keyed by the
    /// label's value, keeping only those that grew.
    pub fn delta_by_label(
        &self,
        earlier: &Metrics,
        family: &str,
        label: &str,
    ) -> BTreeMap<String, u64> {
        let prefix = format!("{family}{{{label}=\"");
        self.samples
            .iter()
            .filter_map(|(name, value)| {
                let key = name.strip_prefix(&prefix)?.split('"').next()?.to_owned();
                let delta = value - earlier.value(name);
                (delta > 0.0).then_some((key, delta as u64))
            })
            .collect()
    }
}

/// `baton-relay` in the cargo target directory of a running integration test
/// (`target/<profile>/baton-relay`, beside the test's `deps` directory).
///
/// # Errors
/// If the test executable cannot be located or no relay binary is there (build it with
/// `cargo build -p baton-relay`; `cargo test --workspace` builds it).
pub fn relay_bin_of_test() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the test binary's path")?;
    let dir = exe.parent().context("the test binary's directory")?;
    [dir, dir.parent().unwrap_or(dir)]
        .iter()
        .map(|d| d.join(format!("baton-relay{}", std::env::consts::EXE_SUFFIX)))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no baton-relay in {} or its parent: run `cargo build -p baton-relay`",
                dir.display()
            )
        })
}

/// A fleet node as a real `baton-relay` process (one a test can SIGKILL) with id `node`,
/// the directory at `directory` and the tests' fleet secret, on loopback ports; waits until it
/// runs. Returns the process, what it printed at start-up, and its data directory, where it
/// wrote the certificate other nodes of the test can share. The test's own `RUST_LOG` is not
/// passed on.
///
/// # Errors
/// If the relay cannot be found, started, or does not say it runs within `timeout`.
pub async fn spawn_fleet_node(
    directory: &str,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<(tokio::process::Child, Running, DataDir)> {
    let (data, stdout, stderr) = DataDir::create("baton-fleet-")?;
    let bin = relay_bin_of_test()?;
    let mut child = tokio::process::Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--directory", directory, "--node-id", node])
        .args(["--fleet-secret", crate::TEST_FLEET_SECRET])
        .args(["--log-format", "json"])
        .arg("--data-dir")
        .arg(data.dir.path())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let running =
        wait_until_running(&mut child, &bin, &data.log_path, &data.err_path, timeout).await?;
    Ok((child, running, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let before = Metrics::parse(
            "# HELP x\nbaton_connections 3\nbaton_datagrams_dropped_total{reason=\"congested\"} 1\n",
        );
        let after = Metrics::parse(
            "baton_connections 5\nbaton_datagrams_dropped_total{reason=\"congested\"} 4\n\
             baton_datagrams_dropped_total{reason=\"too_large\"} 0\n# EOF\n",
        );
        assert_eq!(after.get("baton_connections"), Some(5.0));
        assert_eq!(after.get("missing"), None);
        assert_eq!(after.value("missing"), 0.0);
        let drops = after.by_label("baton_datagrams_dropped_total", "reason");
        assert_eq!(drops.len(), 1);
        assert_eq!(drops.get("congested"), Some(&4));
        let delta = after.delta_by_label(&before, "baton_datagrams_dropped_total", "reason");
        assert_eq!(delta.get("congested"), Some(&3));
        let changed = after.changed_since(&before, &["baton_datagrams", "baton_conn"]);
        assert_eq!(
            changed,
            vec![
                ("baton_connections".to_owned(), 2.0),
                (
                    "baton_datagrams_dropped_total{reason=\"congested\"}".to_owned(),
                    3.0
                ),
            ]
        );
    }

    #[test]
    fn finds_the_highest_bucket_a_histogram_filled() {
        let text = |b: [u32; 4]| {
            format!(
                "h_bucket{{le=\"0.002\"}} {}\nh_bucket{{le=\"0.01\"}} {}\n\
                 h_bucket{{le=\"0.1\"}} {}\nh_bucket{{le=\"+Inf\"}} {}\nh_count {}\n",
                b[0], b[1], b[2], b[3], b[3]
            )
        };
        let before = Metrics::parse(&text([10, 12, 12, 12]));
        assert_eq!(before.histogram_max_since(&before, "h"), None);
        // Two more on time, one in (0.002, 0.01]: the worst is bounded by 0.01.
        let after = Metrics::parse(&text([12, 15, 15, 15]));
        assert_eq!(after.histogram_max_since(&before, "h"), Some(0.01));
        // One more above every bound.
        let later = Metrics::parse(&text([12, 15, 15, 16]));
        assert_eq!(later.histogram_max_since(&after, "h"), Some(f64::INFINITY));
        assert_eq!(later.histogram_max_since(&before, "h"), Some(f64::INFINITY));
        assert_eq!(Metrics::default().histogram_max_since(&before, "h"), None);
    }
}
