//! The NAT lab: real NAT routers in Linux network namespaces, for tests of how Baton crosses
//! them. Needs root, iproute2 (`ip netns`), nftables (`nft`) and conntrack-tools
//! (`conntrack`); [`skip_reason`] says why a machine cannot run it, and tests then skip.
//!
//! # Topology
//!
//! ```text
//!                         internet namespace: bridge br0, 198.18.0.0/24
//!                         relay host addresses 198.18.0.1 and .2 (RELAY_IP, RELAY_IP_2)
//!                 ┌───────────────────────┬─────────────┴──────────┐
//!         198.18.0.11 (wan)       198.18.0.12 (wan)          198.18.0.103 (eth0)
//!          router 1 (NAT)          router 2 (NAT)            host 3 (NatMode::None)
//!         10.0.1.1 (lan)          10.0.2.1 (lan)
//!              │                       │
//!         10.0.1.2 (eth0)         10.0.2.2 (eth0)
//!          host 1                  host 2
//! ```
//!
//! Site `i` (1-based) is a host namespace behind a router namespace whose WAN address is
//! `198.18.0.{10+i}` and whose LAN is `10.0.{i}.0/24` (router `.1`, host `.2`), or, for
//! [`NatMode::None`], a host namespace straight on the bridge at `198.18.0.{100+i}`. Only
//! namespaces the lab created hold these addresses: nothing leaves the machine.
//!
//! # NAT modes (nftables table `ip baton_lab` on each router)
//!
//! - [`NatMode::Cone`]: `snat to WAN` (Linux keeps the inside source port when it is free).
//!   Mapping is endpoint-independent: one inside `ip:port` has one outside port for every
//!   destination. Filtering is address-and-port-dependent ("port-restricted cone"): conntrack
//!   lets in only replies to a flow the inside host opened to that exact `ip:port`. Anything
//!   else reaching the WAN address is dropped silently (`input` chain: `iifname "wan" drop`,
//!   so no ICMP port-unreachable leaks out, as on most home routers).
//! - [`NatMode::Symmetric`]: UDP is `snat to WAN:10000-29999 fully-random`: every new flow
//!   (inside `ip:port` to a new destination) gets a random outside port, so two destinations
//!   see two ports (endpoint-dependent mapping), with the same filtering as `Cone`.
//! - [`NatMode::None`]: a public host, no NAT, no filtering.
//!
//! # Changing a site while it runs
//!
//! - [`Lab::rebind`]: the site's outside ports change, as when a NAT drops its mapping and
//!   makes a new one. `Symmetric`: the UDP port range moves to the other half
//!   (10000-29999 ⇄ 30000-49999); `Cone`: each inside `ip:port` that has a mapping gets an
//!   explicit `snat to WAN:PORT` rule with a new port from 61000 up (above Linux's ephemeral
//!   range, so it cannot clash with a port kept by the plain rule), which keeps the mapping
//!   endpoint-independent. Then the router's whole conntrack table is flushed
//!   (`conntrack -F`), so the next packet out makes a new mapping. Packets still sent to the old
//!   outside port are dropped. A flow that starts between the reading of the table and the
//!   flush keeps its port on a `Cone` site.
//! - [`Lab::cut`] / [`Lab::cut_to`] / [`Lab::restore`]: drop everything the router forwards
//!   (or only what goes to or comes from one internet address), in the router's `cut` chain;
//!   mappings survive a cut (conntrack keeps UDP flows 30 s, 120 s once answered). On a
//!   `None` site the host's own `input`/`output` chains drop instead (its sends then fail with
//!   `EPERM`).
//!
//! # Running things inside
//!
//! [`Lab::command`] runs a program in a namespace (`ip netns exec`); [`udp_socket`] and
//! [`tcp_connect`] make sockets in a namespace from this process (a helper thread enters
//! it with `setns`; a socket stays in the namespace it was made in); [`LabRelay`] is a
//! `baton-relay` process on the internet side and [`LabPlayer`] a `baton-player` process in a
//! site.
//!
//! # Names and teardown
//!
//! Namespaces are named `bnl{pid}-{n}-{role}` (`inet`, `r{i}`, `h{i}`), `n` counting labs in
//! this process, so tests run in parallel. Dropping the [`Lab`] (also while a test panics)
//! kills every process left in its namespaces and deletes them; a new lab deletes the
//! namespaces of labs whose process is gone. Every command the lab runs is bounded by
//! [`COMMAND_TIMEOUT`]. The lab's methods block (each command takes milliseconds; [`Lab::start`]
//! well under a second).
//!
//! # Example
//!
//! A relay on the internet, a host behind a cone NAT and a peer behind a symmetric one (the
//! binaries as an integration test names them, e.g. `env!("CARGO_BIN_EXE_baton-player")`):
//!
//! ```no_run
//! # async fn demo(player: &std::path::Path, args: impl Fn(std::net::SocketAddr, &str, baton_tests::player::Role) -> baton_tests::player::PlayerArgs) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use baton_tests::natlab::{relay_beside, Lab, LabPlayer, LabRelay, NatMode, RELAY_IP};
//! use baton_tests::player::Role;
//!
//! let lab = Lab::start(&[NatMode::Cone, NatMode::Symmetric])?;
//! let wait = Duration::from_secs(10);
//! let relay = LabRelay::start(&lab, &relay_beside(player)?, RELAY_IP, &[], wait).await?;
//! let host_args = args(relay.addr(), relay.fingerprint(), Role::Host { snapshot_bytes: 0 });
//! let host = LabPlayer::start(&lab, &lab.site(1).host_ns, player, &host_args, wait).await?;
//! let code = host.code().unwrap_or_default().to_owned();
//! let peer_args = args(relay.addr(), relay.fingerprint(), Role::Join { code });
//! let peer = LabPlayer::start(&lab, &lab.site(2).host_ns, player, &peer_args, wait).await?;
//! lab.rebind(2)?; // the peer's NAT gives it new outside ports
//! lab.cut_to(1, lab.site(2).wan_ip)?; // site 1 no longer reaches site 2 directly
//! let forwarded = relay.metrics().await?.value("baton_datagrams_forwarded_total");
//! # let _ = (peer, forwarded); Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::player::{PlayerArgs, Report};
use crate::relay_process::{self, DataDir, Metrics, Running};

/// The relay host's first address on the lab's internet.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The relay host's second address (a second relay, or a second destination to tell mapping
/// kinds apart).
pub const RELAY_IP_2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The most sites one lab holds.
pub const MAX_SITES: usize = 32;
/// The longest any one `ip`, `nft` or `conntrack` command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The message a test prints when it skips, followed by why.
pub const SKIP_MESSAGE: &str = "skipped: needs root and nftables (ip netns, nft)";

/// Inside ports of a `Symmetric` router's UDP mappings: the two halves [`Lab::rebind`]
/// alternates between.
const SYMMETRIC_RANGES: [(u16, u16); 2] = [(10000, 29999), (30000, 49999)];
/// The first outside port [`Lab::rebind`] gives a `Cone` mapping (above Linux's ephemeral
/// range, 32768-60999).
const CONE_REBIND_PORTS: (u16, u16) = (61000, 65000);
/// Prefix of every lab namespace name.
const PREFIX: &str = "bnl";
/// Largest HTTP answer [`http_get`] reads.
const MAX_HTTP_ANSWER: u64 = 4 << 20;
/// Largest number of reports a [`LabPlayer`] holds unread before its reader waits.
const REPORT_QUEUE: usize = 4096;

/// How a site reaches the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMode {
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    Cone,
    /// Endpoint-dependent mapping (a random outside port per destination).
    Symmetric,
    /// A public address: no router, no NAT.
    None,
}

/// One private site (or public host) of a [`Lab`].
#[derive(Debug, Clone)]
pub struct Site {
    /// 1-based index, as in the addresses.
    pub index: usize,
    /// Its NAT.
    pub mode: NatMode,
    /// The namespace the client runs in.
    pub host_ns: String,
    /// The router's namespace (`None` for a public host).
    pub router_ns: Option<String>,
    /// The client's own address (`10.0.{i}.2`, or the public address).
    pub client_ip: Ipv4Addr,
    /// The address the internet sees: the router's WAN address, or the public address.
    pub wan_ip: Ipv4Addr,
}

/// One NAT mapping of a router, from its conntrack table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The inside host's address and port.
    pub inside: SocketAddrV4,
    /// Where the flow goes.
    pub remote: SocketAddrV4,
    /// The address and port the remote sees.
    pub outside: SocketAddrV4,
}

/// What a router's NAT rules currently are.
#[derive(Debug, Default)]
struct RouterState {
    /// `Symmetric`: which of [`SYMMETRIC_RANGES`] is in force.
    range: usize,
    /// `Cone`: inside endpoints pinned to an outside port by a rebind.
    pinned: BTreeMap<SocketAddrV4, u16>,
}

/// A lab: the internet namespace and its sites, torn down on drop.
pub struct Lab {
    internet_ns: String,
    sites: Vec<Site>,
    /// Every namespace, in creation order.
    namespaces: Vec<String>,
    routers: Mutex<Vec<RouterState>>,
    /// The next outside port a `Cone` rebind hands out.
    next_cone_port: AtomicU32,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot run the lab, or `None` if it can: not root, a tool missing, or
/// namespaces or nftables NAT not working (checked once per process by building and deleting
/// a namespace with a NAT table).
pub fn skip_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe).clone()
}

/// See [`skip_reason`].
fn probe() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".to_owned());
    }
    for (tool, flag) in [
        ("ip", "-V"),
        ("nft", "--version"),
        ("conntrack", "--version"),
    ] {
        if let Err(e) = run(tool, &[flag], None) {
            return Some(format!("`{tool}` does not run: {e:#}"));
        }
    }
    let ns = format!("{PREFIX}{}-probe", std::process::id());
    let result = run("ip", &["netns", "add", &ns], None).and_then(|_| {
        nft(
            &ns,
            "table ip baton_probe {\n chain post {\n  type nat hook postrouting priority srcnat;\n  masquerade\n }\n}\n",
        )
    });
    let _ = run("ip", &["netns", "del", &ns], None);
    result
        .err()
        .map(|e| format!("namespaces or nftables NAT unavailable: {e:#}"))
}

impl Lab {
    /// Builds a lab with one site per entry of `modes` (site `i` is `modes[i - 1]`). Blocks
    /// while it runs its commands.
    ///
    /// # Errors
    /// If a command fails (see [`skip_reason`] for a machine that cannot run the lab), or
    /// there are more than [`MAX_SITES`] sites.
    pub fn start(modes: &[NatMode]) -> anyhow::Result<Lab> {
        if modes.len() > MAX_SITES {
            bail!("{} sites asked, at most {MAX_SITES}", modes.len());
        }
        remove_stale_namespaces();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{n}-", std::process::id());
        let mut lab = Lab {
            internet_ns: format!("{base}inet"),
            sites: Vec::new(),
            namespaces: Vec::new(),
            routers: Mutex::new(Vec::new()),
            next_cone_port: AtomicU32::new(u32::from(CONE_REBIND_PORTS.0)),
        };
        // From here on, dropping `lab` removes whatever was made.
        let inet = lab.internet_ns.clone();
        lab.add_namespace(&inet)?;
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"])?;
        for addr in [RELAY_IP, RELAY_IP_2] {
            ip(&[
                "-n",
                &inet,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "br0",
            ])?;
        }
        ip(&["-n", &inet, "link", "set", "br0", "up"])?;
        for (i, mode) in modes.iter().enumerate() {
            let site = lab.add_site(&base, i + 1, *mode)?;
            lab.sites.push(site);
        }
        Ok(lab)
    }

    /// Creates namespace `ns` (remembered for teardown) with its loopback up.
    fn add_namespace(&mut self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Builds site `index`.
    fn add_site(&mut self, base: &str, index: usize, mode: NatMode) -> anyhow::Result<Site> {
        let inet = self.internet_ns.clone();
        let host = format!("{base}h{index}");
        let port = format!("s{index}");
        let octet = u8::try_from(index).context("site index")?;
        self.add_namespace(&host)?;
        if mode == NatMode::None {
            let public = Ipv4Addr::new(198, 18, 0, 100 + octet);
            link_pair(&host, "eth0", &inet, &port)?;
            ip(&["-n", &inet, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &inet, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{public}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            nft(
                &host,
                "table ip baton_lab {\n\
                 chain cut_in { type filter hook input priority filter; policy accept; }\n\
                 chain cut_out { type filter hook output priority filter; policy accept; }\n\
                 }\n",
            )?;
            self.routers
                .lock()
                .map_err(|_| anyhow::anyhow!("lab state poisoned"))?
                .push(RouterState::default());
            return Ok(Site {
                index,
                mode,
                host_ns: host,
                router_ns: None,
                client_ip: public,
                wan_ip: public,
            });
        }
        let router = format!("{base}r{index}");
        let wan = Ipv4Addr::new(198, 18, 0, 10 + octet);
        let gateway = Ipv4Addr::new(10, 0, octet, 1);
        let client = Ipv4Addr::new(10, 0, octet, 2);
        self.add_namespace(&router)?;
        link_pair(&router, "wan", &inet, &port)?;
        ip(&["-n", &inet, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &inet, "link", "set", &port, "up"])?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{wan}/24"),
            "dev",
            "wan",
        ])?;
        ip(&["-n", &router, "link", "set", "wan", "up"])?;
        link_pair(&router, "lan", &host, "eth0")?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            "lan",
        ])?;
        ip(&["-n", &router, "link", "set", "lan", "up"])?;
        ip(&[
            "-n",
            &host,
            "addr",
            "add",
            &format!("{client}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &host,
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
        ])?;
        in_namespace(&router, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling forwarding")
        })?;
        let state = RouterState::default();
        let mut rules = String::new();
        for rule in nat_rules(mode, wan, &state) {
            let _ = writeln!(rules, "{rule}");
        }
        nft(
            &router,
            &format!(
                "table ip baton_lab {{\n\
                 chain postrouting {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 {rules}}}\n\
                 chain input {{\n\
                 type filter hook input priority filter; policy accept;\n\
                 iifname \"wan\" drop\n\
                 }}\n\
                 chain cut {{ type filter hook forward priority filter; policy accept; }}\n\
                 }}\n"
            ),
        )?;
        self.routers
            .lock()
            .map_err(|_| anyhow::anyhow!("lab state poisoned"))?
            .push(state);
        Ok(Site {
            index,
            mode,
            host_ns: host,
            router_ns: Some(router),
            client_ip: client,
            wan_ip: wan,
        })
    }

    /// The internet namespace (where the relay runs).
    pub fn internet_ns(&self) -> &str {
        &self.internet_ns
    }

    /// Site `index` (1-based).
    ///
    /// # Panics
    /// If there is no such site (a mistake in the test).
    pub fn site(&self, index: usize) -> &Site {
        index
            .checked_sub(1)
            .and_then(|i| self.sites.get(i))
            .unwrap_or_else(|| panic!("the lab has no site {index}"))
    }

    /// Every site, in order.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// `program` run in namespace `ns` (`ip netns exec ns program`), killed when dropped.
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(program)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// A UDP socket bound to `addr` in namespace `ns`, to use from this process (see
    /// [`udp_socket`]).
    ///
    /// # Errors
    /// If the namespace cannot be entered or the bind fails.
    pub fn udp_socket(&self, ns: &str, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
        udp_socket(ns, addr)
    }

    /// The NAT mappings site `index`'s router holds now (its conntrack table, UDP only).
    ///
    /// # Errors
    /// If the site has no router or `conntrack` fails.
    pub fn mappings(&self, index: usize) -> anyhow::Result<Vec<Mapping>> {
        let router = self.router(index)?;
        let out = run(
            "ip",
            &["netns", "exec", router, "conntrack", "-L", "-p", "udp"],
            None,
        )?;
        Ok(out.lines().filter_map(parse_conntrack_line).collect())
    }

    /// Changes site `index`'s outside ports (see the module doc): the router's NAT rules move
    /// to new ports and its conntrack table is flushed.
    ///
    /// # Errors
    /// If the site has no router or a command fails.
    pub fn rebind(&self, index: usize) -> anyhow::Result<()> {
        let site = self.site(index).clone();
        let router = self.router(index)?.to_owned();
        let current = if site.mode == NatMode::Cone {
            self.mappings(index)?
        } else {
            Vec::new()
        };
        let rules = {
            let mut routers = self
                .routers
                .lock()
                .map_err(|_| anyhow::anyhow!("lab state poisoned"))?;
            let state = routers
                .get_mut(index - 1)
                .context("no state for the site")?;
            match site.mode {
                NatMode::Symmetric => state.range = (state.range + 1) % SYMMETRIC_RANGES.len(),
                NatMode::Cone => {
                    for mapping in &current {
                        let old = mapping.outside.port();
                        let new = self.next_cone_port(old);
                        state.pinned.insert(mapping.inside, new);
                    }
                }
                NatMode::None => bail!("site {index} has no NAT"),
            }
            nat_rules(site.mode, site.wan_ip, state)
        };
        let mut script = "flush chain ip baton_lab postrouting\n".to_owned();
        for rule in rules {
            let _ = writeln!(script, "add rule ip baton_lab postrouting {rule}");
        }
        nft(&router, &script)?;
        run("ip", &["netns", "exec", &router, "conntrack", "-F"], None)?;
        Ok(())
    }

    /// An outside port for a `Cone` rebind, other than `old`.
    fn next_cone_port(&self, old: u16) -> u16 {
        let (low, high) = CONE_REBIND_PORTS;
        let span = u32::from(high - low) + 1;
        loop {
            let n = self.next_cone_port.fetch_add(1, Ordering::Relaxed);
            let port = low + u16::try_from((n - u32::from(low)) % span).unwrap_or(0);
            if port != old {
                return port;
            }
        }
    }

    /// Cuts site `index` off the internet: everything its router forwards is dropped, both
    /// ways, until [`Lab::restore`].
    ///
    /// # Errors
    /// If a command fails.
    pub fn cut(&self, index: usize) -> anyhow::Result<()> {
        self.add_cut(index, None)
    }

    /// Cuts site `index` off internet address `remote` only (both ways), until
    /// [`Lab::restore`]: e.g. the direct path to a peer while the relay path stays.
    ///
    /// # Errors
    /// If a command fails.
    pub fn cut_to(&self, index: usize, remote: Ipv4Addr) -> anyhow::Result<()> {
        self.add_cut(index, Some(remote))
    }

    /// Lifts every cut of site `index`.
    ///
    /// # Errors
    /// If a command fails.
    pub fn restore(&self, index: usize) -> anyhow::Result<()> {
        let site = self.site(index);
        match &site.router_ns {
            Some(router) => nft(router, "flush chain ip baton_lab cut\n"),
            None => nft(
                &site.host_ns,
                "flush chain ip baton_lab cut_in\nflush chain ip baton_lab cut_out\n",
            ),
        }
    }

    /// See [`Lab::cut`] and [`Lab::cut_to`].
    fn add_cut(&self, index: usize, remote: Option<Ipv4Addr>) -> anyhow::Result<()> {
        let site = self.site(index);
        let (incoming, outgoing) = match remote {
            Some(addr) => (format!("ip saddr {addr} "), format!("ip daddr {addr} ")),
            None => (String::new(), String::new()),
        };
        match &site.router_ns {
            Some(router) => nft(
                router,
                &format!(
                    "add rule ip baton_lab cut iifname \"wan\" {incoming}drop\n\
                     add rule ip baton_lab cut oifname \"wan\" {outgoing}drop\n"
                ),
            ),
            None => nft(
                &site.host_ns,
                &format!(
                    "add rule ip baton_lab cut_in iifname \"eth0\" {incoming}drop\n\
                     add rule ip baton_lab cut_out oifname \"eth0\" {outgoing}drop\n"
                ),
            ),
        }
    }

    /// Site `index`'s router namespace.
    fn router(&self, index: usize) -> anyhow::Result<&str> {
        self.site(index)
            .router_ns
            .as_deref()
            .with_context(|| format!("site {index} has no router (NatMode::None)"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// The `postrouting` rules of a router in `mode` with WAN address `wan`, in order.
fn nat_rules(mode: NatMode, wan: Ipv4Addr, state: &RouterState) -> Vec<String> {
    let mut rules = Vec::new();
    match mode {
        NatMode::Cone => {
            for (inside, port) in &state.pinned {
                rules.push(format!(
                    "oifname \"wan\" ip saddr {} udp sport {} snat to {wan}:{port}",
                    inside.ip(),
                    inside.port()
                ));
            }
        }
        NatMode::Symmetric => {
            let (low, high) = SYMMETRIC_RANGES[state.range % SYMMETRIC_RANGES.len()];
            rules.push(format!(
                "oifname \"wan\" meta l4proto udp snat to {wan}:{low}-{high} fully-random"
            ));
        }
        NatMode::None => {}
    }
    rules.push(format!("oifname \"wan\" snat to {wan}"));
    rules
}

/// One line of `conntrack -L -p udp`: the first `src`/`dst`/`sport`/`dport` are the original
/// direction, the second the reply's (whose destination is the outside address).
fn parse_conntrack_line(line: &str) -> Option<Mapping> {
    let mut fields: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for token in line.split_whitespace() {
        if let Some((key, value)) = token.split_once('=') {
            fields.entry(key).or_default().push(value);
        }
    }
    let at = |key: &str, i: usize| fields.get(key).and_then(|v| v.get(i)).copied();
    let addr = |ip_key: &str, port_key: &str, i: usize| -> Option<SocketAddrV4> {
        Some(SocketAddrV4::new(
            at(ip_key, i)?.parse().ok()?,
            at(port_key, i)?.parse().ok()?,
        ))
    };
    Some(Mapping {
        inside: addr("src", "sport", 0)?,
        remote: addr("dst", "dport", 0)?,
        outside: addr("dst", "dport", 1)?,
    })
}

/// A veth pair: `a_name` in namespace `a`, `b_name` in `b` (made there directly, so names
/// need only be unique inside each namespace).
fn link_pair(a: &str, a_name: &str, b: &str, b_name: &str) -> anyhow::Result<()> {
    ip(&[
        "link", "add", a_name, "netns", a, "type", "veth", "peer", "name", b_name, "netns", b,
    ])
    .map(drop)
}

/// Kills what runs in namespace `ns` (processes the lab's tests started there) and deletes
/// it; failures are printed, not raised (teardown goes on).
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns], None) {
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if let Err(e) = run("ip", &["netns", "del", ns], None) {
        eprintln!("natlab: deleting namespace {ns}: {e:#}");
    }
}

/// Deletes lab namespaces whose creating process has exited (a test run that was killed
/// before its labs were dropped).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name], None);
        }
    }
}

/// A UDP socket bound to `addr` in namespace `ns`, to use from this process: it sends and
/// receives in that namespace wherever it is used (for tokio: `set_nonblocking(true)`, then
/// `tokio::net::UdpSocket::from_std`).
///
/// # Errors
/// If the namespace cannot be entered or the bind fails.
pub fn udp_socket(ns: &str, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    in_namespace(ns, move || UdpSocket::bind(addr).context("binding"))
}

/// A TCP connection to `addr` from namespace `ns`, made within `timeout` (blocks).
///
/// # Errors
/// If the namespace cannot be entered or the connection fails.
pub fn tcp_connect(ns: &str, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    in_namespace(ns, move || {
        TcpStream::connect_timeout(&addr, timeout).context("connecting")
    })
}

/// Runs `f` on a thread that has entered network namespace `ns`. What it makes there
/// (sockets) stays in that namespace.
fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering namespace {ns}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// `ip ARGS`.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args, None)
}

/// `nft -f -` in namespace `ns`, with `script` on stdin (one transaction).
fn nft(ns: &str, script: &str) -> anyhow::Result<()> {
    run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)).map(drop)
}

/// Runs `program args` with `stdin`, at most [`COMMAND_TIMEOUT`]; its stdout on success.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}`"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to `{line}`"))?;
    }
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting")? {
            break status;
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` took longer than {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("`{line}` failed ({status}): {}", err.trim());
    }
    Ok(out)
}

/// `GET path` over HTTP/1.0 to `addr` from namespace `ns`; the status and the body. Bounded:
/// `timeout` for connecting and for each read, answers up to 4 MiB. Runs on a blocking
/// thread.
///
/// # Errors
/// If the connection fails or the answer is not HTTP.
pub async fn http_get(
    ns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let (ns, path) = (ns.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut stream = tcp_connect(&ns, addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut answer = Vec::new();
        stream.take(MAX_HTTP_ANSWER).read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        Ok((status, body.to_owned()))
    })
    .await
    .context("HTTP task")?
}

/// A `baton-relay` process in the lab's internet namespace: QUIC on a relay address, admin
/// on the namespace's loopback.
pub struct LabRelay {
    child: tokio::process::Child,
    /// What it announced at start-up (QUIC address, fingerprint, ...).
    pub running: Running,
    /// Its data directory and log files.
    pub data: DataDir,
    ns: String,
}

impl LabRelay {
    /// Starts `bin` on `ip` (a random port) with `extra` arguments, and waits until it runs.
    ///
    /// # Errors
    /// If it cannot start or does not announce itself within `timeout`.
    pub async fn start(
        lab: &Lab,
        bin: &Path,
        ip: Ipv4Addr,
        extra: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<LabRelay> {
        let (data, stdout, stderr) = DataDir::create("baton-natlab-")?;
        let mut child = lab
            .command(lab.internet_ns(), bin)
            .args(["--listen", &format!("{ip}:0")])
            .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data.dir.path())
            .args(extra)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("starting the relay")?;
        let running = relay_process::wait_until_running(
            &mut child,
            bin,
            &data.log_path,
            &data.err_path,
            timeout,
        )
        .await?;
        Ok(LabRelay {
            child,
            running,
            data,
            ns: lab.internet_ns().to_owned(),
        })
    }

    /// Its QUIC address.
    pub fn addr(&self) -> SocketAddr {
        self.running.quic
    }

    /// Its certificate's fingerprint (hex, as `--fingerprint` takes it).
    pub fn fingerprint(&self) -> &str {
        &self.running.fingerprint
    }

    /// `GET path` on its admin API; the status and body.
    ///
    /// # Errors
    /// If it has no admin server or the request fails.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let admin = self
            .running
            .admin
            .context("the relay runs no admin server")?;
        http_get(&self.ns, admin, path, Duration::from_secs(5)).await
    }

    /// Its `/metrics`, parsed.
    ///
    /// # Errors
    /// If the request fails or does not answer 200.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let (status, body) = self.get("/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Metrics::parse(&body))
    }

    /// `GET /v1/allocations`, parsed.
    ///
    /// # Errors
    /// If the request fails or the answer is not JSON.
    pub async fn allocations(&self) -> anyhow::Result<Value> {
        let (status, body) = self.get("/v1/allocations").await?;
        if status != 200 {
            bail!("/v1/allocations answered {status}: {body}");
        }
        serde_json::from_str(&body).context("allocations JSON")
    }

    /// Whether the process has exited (with its status).
    ///
    /// # Errors
    /// If its status cannot be read.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait().context("relay status")
    }
}

/// A `baton-player` process in a lab namespace, its reports read as they come.
pub struct LabPlayer {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    reports: mpsc::Receiver<(u64, Report)>,
    /// The task reading its stdout (aborted on drop).
    reader: tokio::task::JoinHandle<()>,
    stderr: tempfile::NamedTempFile,
    /// What it reported when it entered the game.
    pub ready: Report,
}

impl LabPlayer {
    /// Starts `bin` (a `baton-player`) with `args` in namespace `ns` and waits (at most
    /// `timeout`) until it is in the game.
    ///
    /// # Errors
    /// If it cannot start, reports [`Report::Fatal`], or is not ready in time.
    pub async fn start(
        lab: &Lab,
        ns: &str,
        bin: &Path,
        args: &PlayerArgs,
        timeout: Duration,
    ) -> anyhow::Result<LabPlayer> {
        let stderr = tempfile::NamedTempFile::new().context("player stderr file")?;
        let mut child = lab
            .command(ns, bin)
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().context("player stderr file")?)
            .spawn()
            .context("starting the player")?;
        let stdout = child.stdout.take().context("player stdout")?;
        let stdin = child.stdin.take();
        let (tx, reports) = mpsc::channel(REPORT_QUEUE);
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            // One iteration per line, until the player's output ends or no one listens.
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let t_us = value.get("t_us").and_then(Value::as_u64).unwrap_or(0);
                let Ok(report) = serde_json::from_value::<Report>(value) else {
                    continue;
                };
                if tx.send((t_us, report)).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send((
                    crate::player::now_us(),
                    Report::Exited {
                        detail: "output ended".to_owned(),
                    },
                ))
                .await;
        });
        let mut player = LabPlayer {
            child,
            stdin,
            reports,
            reader,
            stderr,
            ready: Report::Closed,
        };
        let (_, ready) = player
            .next_matching(timeout, |r| {
                matches!(r, Report::Ready { .. } | Report::Fatal { .. })
            })
            .await?;
        if let Report::Fatal { error } = &ready {
            bail!("the player could not enter the game: {error}");
        }
        player.ready = ready;
        Ok(player)
    }

    /// The join code it reported (hosts).
    pub fn code(&self) -> Option<&str> {
        match &self.ready {
            Report::Ready { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Its peer id.
    pub fn peer(&self) -> Option<u16> {
        match &self.ready {
            Report::Ready { peer, .. } => Some(*peer),
            _ => None,
        }
    }

    /// The next report and its time (µs since the Unix epoch), within `within`.
    ///
    /// # Errors
    /// If none comes in time or the player's output has ended.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<(u64, Report)> {
        match tokio::time::timeout(within, self.reports.recv()).await {
            Ok(Some(report)) => Ok(report),
            Ok(None) => bail!("player output ended; stderr: {}", self.stderr_tail()),
            Err(_) => bail!(
                "no report within {within:?}; stderr: {}",
                self.stderr_tail()
            ),
        }
    }

    /// Reads reports until one matches `pred` (within `within` in all), handing every
    /// report, matching or not, to `pred`.
    ///
    /// # Errors
    /// If none matches in time or the output ends first.
    pub async fn next_matching(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&Report) -> bool,
    ) -> anyhow::Result<(u64, Report)> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (t, report) = self.next(left).await?;
            if let Report::Exited { .. } = report {
                bail!("player exited; stderr: {}", self.stderr_tail());
            }
            if pred(&report) {
                return Ok((t, report));
            }
        }
    }

    /// Tells it to leave cleanly and waits (at most `timeout`) for it to exit.
    ///
    /// # Errors
    /// If it does not exit in time.
    pub async fn close(mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"close\n").await;
        }
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("player did not exit in time")?
            .context("player status")?;
        Ok(())
    }

    /// The end of what it wrote on stderr.
    pub fn stderr_tail(&self) -> String {
        relay_process::tail(self.stderr.path())
    }
}

impl Drop for LabPlayer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// `baton-relay` in the same directory as `baton-player` (or its parent: test executables
/// live in `target/<profile>/deps`), as cargo builds them.
///
/// # Errors
/// If there is none.
pub fn relay_beside(player_bin: &Path) -> anyhow::Result<PathBuf> {
    let dir = player_bin.parent().context("player binary directory")?;
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(format!("baton-relay{}", std::env::consts::EXE_SUFFIX)))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no baton-relay beside {}: build it (`cargo build -p baton-relay`)",
                player_bin.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_parse_into_mappings() {
        let line = "udp      17 29 src=10.0.1.2 dst=198.18.0.1 sport=4000 dport=5001 [UNREPLIED] \
                    src=198.18.0.1 dst=198.18.0.11 sport=5001 dport=34464 mark=0 use=1";
        assert_eq!(
            parse_conntrack_line(line),
            Some(Mapping {
                inside: "10.0.1.2:4000".parse().unwrap(),
                remote: "198.18.0.1:5001".parse().unwrap(),
                outside: "198.18.0.11:34464".parse().unwrap(),
            })
        );
        assert_eq!(
            parse_conntrack_line("conntrack v1.4.7: 1 flow entries"),
            None
        );
    }

    #[test]
    fn rules_follow_the_mode_and_rebinds() {
        let wan = Ipv4Addr::new(198, 18, 0, 11);
        let mut state = RouterState::default();
        assert_eq!(
            nat_rules(NatMode::Cone, wan, &state),
            ["oifname \"wan\" snat to 198.18.0.11"]
        );
        state.pinned.insert("10.0.1.2:4000".parse().unwrap(), 61000);
        assert_eq!(
            nat_rules(NatMode::Cone, wan, &state),
            [
                "oifname \"wan\" ip saddr 10.0.1.2 udp sport 4000 snat to 198.18.0.11:61000",
                "oifname \"wan\" snat to 198.18.0.11",
            ]
        );
        assert!(
            nat_rules(NatMode::Symmetric, wan, &state)[0].ends_with(":10000-29999 fully-random")
        );
        state.range = 1;
        assert!(
            nat_rules(NatMode::Symmetric, wan, &state)[0].ends_with(":30000-49999 fully-random")
        );
    }
}
