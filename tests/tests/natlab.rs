//! The relay path through real NATs: a `baton-relay` process on the lab's internet and
//! `baton-player` processes behind cone and symmetric NAT routers in network namespaces
//! (`baton_tests::natlab`). First the lab itself is checked (each NAT mode maps and filters as
//! documented; rebind and cut do what they say; plain UDP hole punching crosses exactly the pairs
//! it crosses between real NATs of these kinds), then games across every NAT pair, a NAT that
//! rebinds mid-game, a link cut shorter than the keepalive, and direct host–peer paths (SPEC
//! section 17): punched through two cone NATs and falling back to the relay when cut, and
//! staying relayed between two symmetric NATs.
//!
//! Needs root, `ip`, `nft` and `conntrack`: elsewhere each test prints
//! `skipped: needs root and nftables (ip netns, nft): <why>` and passes; under CI (`CI=true`)
//! a machine that cannot run the lab fails instead.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_client::NatKind;
use baton_tests::natlab::{
    self, Lab, LabPlayer, LabRelay, Mapping, NatMode, RELAY_IP, RELAY_IP_2, SKIP_MESSAGE,
};
use baton_tests::player::{now_us, PlayerArgs, Report, Role};
use baton_tests::WAIT;

/// The game client.
const PLAYER: &str = env!("CARGO_BIN_EXE_baton-player");
/// Datagrams per second each player sends.
const RATE: u32 = 50;

/// A lab with `modes`, or `None` (after saying why) on a machine that cannot run it.
fn lab(modes: &[NatMode]) -> Option<Lab> {
    if let Some(why) = natlab::skip_reason() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI must run the NAT lab, but this machine cannot: {why}"
        );
        eprintln!("{SKIP_MESSAGE}: {why}");
        return None;
    }
    Some(Lab::start(modes).expect("the lab builds"))
}

fn relay_bin() -> PathBuf {
    natlab::relay_beside(Path::new(PLAYER)).expect("baton-relay built beside baton-player")
}

/// A UDP socket in `ns` on `addr`, reads bounded by the test wait.
fn socket(lab: &Lab, ns: &str, addr: SocketAddr) -> UdpSocket {
    let socket = lab.udp_socket(ns, addr).expect("socket in the namespace");
    socket.set_read_timeout(Some(WAIT)).expect("read timeout");
    socket
}

/// The next datagram on `socket` and its source (panics after the wait).
fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 64];
    let (n, from) = socket
        .recv_from(&mut buf)
        .expect("a datagram within the wait");
    (buf[..n].to_vec(), from)
}

/// The outside address each of two destinations sees for one inside socket of `site`.
fn sources(lab: &Lab, site: usize, port: u16) -> (SocketAddr, SocketAddr) {
    let inet = lab.internet_ns();
    let a = socket(lab, inet, SocketAddr::from((RELAY_IP, port)));
    let b = socket(lab, inet, SocketAddr::from((RELAY_IP_2, port)));
    let s = lab.site(site);
    let client = socket(lab, &s.host_ns, SocketAddr::from((s.client_ip, 4000)));
    client.send_to(b"a", a.local_addr().unwrap()).unwrap();
    client.send_to(b"b", b.local_addr().unwrap()).unwrap();
    let (_, seen_a) = receive(&a);
    let (_, seen_b) = receive(&b);
    (seen_a, seen_b)
}

#[tokio::test]
async fn the_lab_maps_filters_rebinds_and_cuts_as_documented() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::Symmetric, NatMode::None]) else {
        return;
    };
    let (cone, symmetric, public) = (lab.site(1), lab.site(2), lab.site(3));
    // Cone: one outside port (the inside one, kept) for both destinations.
    let (a, b) = sources(&lab, 1, 5000);
    assert_eq!(a, SocketAddr::from((cone.wan_ip, 4000)));
    assert_eq!(b, a, "endpoint-independent mapping");
    // Symmetric: a port per destination, from the first range.
    let (a, b) = sources(&lab, 2, 5001);
    assert_eq!(
        (a.ip(), b.ip()),
        (symmetric.wan_ip.into(), symmetric.wan_ip.into())
    );
    assert_ne!(a.port(), b.port(), "endpoint-dependent mapping");
    assert!((10000..=29999).contains(&a.port()) && (10000..=29999).contains(&b.port()));
    // Public: the host's own address.
    let (a, b) = sources(&lab, 3, 5002);
    assert_eq!((a, b), (SocketAddr::from((public.client_ip, 4000)), a));

    // Filtering on the cone site: only the exact ip:port the client wrote to gets in.
    let inet = lab.internet_ns();
    let known = socket(&lab, inet, SocketAddr::from((RELAY_IP, 5100)));
    let other_port = socket(&lab, inet, SocketAddr::from((RELAY_IP, 5101)));
    let other_ip = socket(&lab, inet, SocketAddr::from((RELAY_IP_2, 5100)));
    let client = socket(
        &lab,
        &cone.host_ns,
        SocketAddr::from((cone.client_ip, 4100)),
    );
    client
        .send_to(b"open", known.local_addr().unwrap())
        .unwrap();
    let (_, outside) = receive(&known);
    other_port.send_to(b"stranger-port", outside).unwrap();
    other_ip.send_to(b"stranger-ip", outside).unwrap();
    // Sent last on the same path: once it is in, the strangers' datagrams were dropped.
    known.send_to(b"known", outside).unwrap();
    assert_eq!(receive(&client).0, b"known");
    // Once the client has written to the other port, that one gets in too.
    client
        .send_to(b"open", other_port.local_addr().unwrap())
        .unwrap();
    let _ = receive(&other_port);
    other_port.send_to(b"now-known", outside).unwrap();
    assert_eq!(receive(&client).0, b"now-known");

    // The router's table shows the mapping.
    let mappings = lab.mappings(1).expect("mappings");
    assert!(
        mappings.contains(&Mapping {
            inside: SocketAddrV4::new(cone.client_ip, 4100),
            remote: SocketAddrV4::new(RELAY_IP, 5100),
            outside: SocketAddrV4::new(cone.wan_ip, 4100),
        }),
        "{mappings:?}"
    );

    // Rebind: the same inside socket now goes out on another port, still one for every
    // destination on the cone site, and new ones (from the other range) on the symmetric one.
    lab.rebind(1).expect("rebind the cone");
    client
        .send_to(b"again", known.local_addr().unwrap())
        .unwrap();
    let (_, moved) = receive(&known);
    client
        .send_to(b"again", other_ip.local_addr().unwrap())
        .unwrap();
    let (_, moved_b) = receive(&other_ip);
    assert_eq!(moved.ip(), outside.ip());
    assert_ne!(moved.port(), outside.port(), "the outside port changed");
    assert!(moved.port() >= 61000, "{moved}");
    assert_eq!(
        moved_b, moved,
        "still endpoint-independent after the rebind"
    );
    // The old mapping is gone: the other port is no longer let in.
    other_port.send_to(b"old-mapping", outside).unwrap();
    known.send_to(b"new-mapping", moved).unwrap();
    assert_eq!(receive(&client).0, b"new-mapping");
    lab.rebind(2).expect("rebind the symmetric site");
    let (a, b) = sources(&lab, 2, 5003);
    assert!(
        (30000..=49999).contains(&a.port()) && (30000..=49999).contains(&b.port()),
        "{a} {b}"
    );
    assert!(lab.rebind(3).is_err(), "a public host has no NAT to rebind");

    // Cut and restore, at a router and at a public host: what is sent during the cut never
    // arrives, what is sent after it does.
    for site in [1, 3] {
        let s = lab.site(site);
        let client = socket(&lab, &s.host_ns, SocketAddr::from((s.client_ip, 4200)));
        let server = socket(&lab, inet, SocketAddr::from((RELAY_IP, 5200 + site as u16)));
        let to = server.local_addr().unwrap();
        client.send_to(b"before", to).unwrap();
        assert_eq!(receive(&server).0, b"before");
        lab.cut(site).expect("cut");
        // A public host's own output is dropped: its send fails (EPERM); a NATed one's send
        // succeeds and the router drops it.
        let _ = client.send_to(b"during", to);
        lab.restore(site).expect("restore");
        client.send_to(b"after", to).unwrap();
        assert_eq!(receive(&server).0, b"after", "site {site}");
    }
    // Cut to one address only: the other still gets through.
    lab.cut_to(1, RELAY_IP_2).expect("cut to one address");
    let client = socket(
        &lab,
        &cone.host_ns,
        SocketAddr::from((cone.client_ip, 4300)),
    );
    let blocked = socket(&lab, inet, SocketAddr::from((RELAY_IP_2, 5300)));
    let open = socket(&lab, inet, SocketAddr::from((RELAY_IP, 5300)));
    client
        .send_to(b"blocked", blocked.local_addr().unwrap())
        .unwrap();
    client.send_to(b"open", open.local_addr().unwrap()).unwrap();
    assert_eq!(receive(&open).0, b"open");
    lab.restore(1).expect("restore");
    client
        .send_to(b"unblocked", blocked.local_addr().unwrap())
        .unwrap();
    assert_eq!(receive(&blocked).0, b"unblocked");
}

/// Reads `socket` until the rendezvous' marker; the source of the first other datagram.
fn until_marker(socket: &UdpSocket) -> Option<SocketAddr> {
    let mut first = None;
    loop {
        let (bytes, from) = receive(socket);
        if bytes == b"marker" {
            return first;
        }
        first = first.or(Some(from));
    }
}

/// Whether sites `a` and `b` reach each other directly over plain UDP as a hole-punching
/// client would: each learns its outside address from a rendezvous on the internet, then in
/// up to five rounds both send to the other's address (or, once a datagram from the other
/// arrived, to where it came from). A round ends with a marker from the rendezvous, sent
/// after the round's datagrams: what was let in arrived before it.
fn punches_through(lab: &Lab, a: usize, b: usize, port: u16) -> bool {
    let r = socket(lab, lab.internet_ns(), SocketAddr::from((RELAY_IP, port)));
    let (sa, sb) = (lab.site(a), lab.site(b));
    let ca = socket(lab, &sa.host_ns, SocketAddr::from((sa.client_ip, port)));
    let cb = socket(lab, &sb.host_ns, SocketAddr::from((sb.client_ip, port)));
    let rendezvous = r.local_addr().unwrap();
    ca.send_to(b"hello", rendezvous).unwrap();
    let (_, seen_a) = receive(&r);
    cb.send_to(b"hello", rendezvous).unwrap();
    let (_, seen_b) = receive(&r);
    let (mut heard_at_a, mut heard_at_b) = (None, None);
    for _round in 0..5 {
        ca.send_to(b"punch", heard_at_a.unwrap_or(seen_b)).unwrap();
        cb.send_to(b"punch", heard_at_b.unwrap_or(seen_a)).unwrap();
        r.send_to(b"marker", seen_a).unwrap();
        r.send_to(b"marker", seen_b).unwrap();
        heard_at_a = heard_at_a.or(until_marker(&ca));
        heard_at_b = heard_at_b.or(until_marker(&cb));
        if let (Some(from_b), Some(from_a)) = (heard_at_a, heard_at_b) {
            assert_eq!(from_b.ip(), std::net::IpAddr::from(sb.wan_ip));
            assert_eq!(from_a.ip(), std::net::IpAddr::from(sa.wan_ip));
            return true;
        }
    }
    false
}

/// The lab lets UDP hole punching through where real NATs of these kinds do, and only
/// there: cone ↔ cone and anything ↔ public go direct; a symmetric NAT facing a cone (whose
/// filter wants the port it wrote to) or another symmetric one does not.
#[tokio::test]
async fn hole_punching_in_the_lab_goes_direct_where_the_nats_allow() {
    use NatMode::{Cone, Symmetric};
    let Some(lab) = lab(&[
        Cone,
        Cone,
        Symmetric,
        Symmetric,
        NatMode::None,
        NatMode::None,
    ]) else {
        return;
    };
    let expected = [
        ((1, 2), true),
        ((1, 3), false),
        ((3, 1), false),
        ((3, 4), false),
        ((1, 5), true),
        ((3, 5), true),
        ((5, 6), true),
    ];
    for (k, ((a, b), direct)) in expected.into_iter().enumerate() {
        let got = punches_through(&lab, a, b, 6000 + k as u16);
        let (ma, mb) = (lab.site(a).mode, lab.site(b).mode);
        eprintln!(
            "{ma:?} ↔ {mb:?}: {}",
            if got { "direct" } else { "no direct path" }
        );
        assert_eq!(got, direct, "{ma:?} (site {a}) ↔ {mb:?} (site {b})");
    }
}

/// The settings of a player in these tests: the lab's, at [`RATE`], relayed only, for at
/// most a minute. `BATON_LAB_PLAYER_LOG=baton_client=debug` logs every lab player's SDK (its
/// stderr, whose tail a failed test prints).
fn player_args(relay: &LabRelay, role: Role) -> PlayerArgs {
    PlayerArgs {
        max_secs: 60,
        ..baton_tests::pathbench::player_args(relay, role, RATE, false)
    }
}

/// A relay on the lab's internet, a host in site `host_site` and a peer in `peer_site`.
struct Game {
    relay: LabRelay,
    host: LabPlayer,
    peer: LabPlayer,
    peer_id: u16,
}

impl Game {
    async fn start(lab: &Lab, host_site: usize, peer_site: usize, relay_args: &[&str]) -> Game {
        Self::start_with(lab, host_site, peer_site, relay_args, false).await
    }

    /// As [`Game::start`], both players trying direct paths if `direct`.
    async fn start_with(
        lab: &Lab,
        host_site: usize,
        peer_site: usize,
        relay_args: &[&str],
        direct: bool,
    ) -> Game {
        let relay = LabRelay::start(lab, &relay_bin(), RELAY_IP, relay_args, WAIT)
            .await
            .expect("relay starts in the internet namespace");
        let player = Path::new(PLAYER);
        let player_args = |relay: &LabRelay, role| PlayerArgs {
            direct,
            ..player_args(relay, role)
        };
        let host_args = player_args(&relay, Role::Host { snapshot_bytes: 0 });
        let host = LabPlayer::start(lab, &lab.site(host_site).host_ns, player, &host_args, WAIT)
            .await
            .expect("host enters");
        let code = host.code().expect("join code").to_owned();
        let peer_args = player_args(&relay, Role::Join { code });
        let peer = LabPlayer::start(lab, &lab.site(peer_site).host_ns, player, &peer_args, WAIT)
            .await
            .expect("peer joins");
        let peer_id = peer.peer().expect("peer id");
        Game {
            relay,
            host,
            peer,
            peer_id,
        }
    }

    /// A game between sites 1 and 2 with direct paths preferred, once both the host and the
    /// peer report their path to each other direct.
    async fn start_direct(lab: &Lab) -> (Game, Log) {
        let mut game = Game::start_with(lab, 1, 2, &[], true).await;
        let mut log = Log::default();
        let peer_id = game.peer_id;
        path_is(&mut game.peer, 0, "direct", WAIT, &mut log).await;
        path_is(&mut game.host, peer_id, "direct", WAIT, &mut log).await;
        (game, log)
    }

    /// Waits until each side has received a datagram from the other that arrived after
    /// `since_us`, tallying what was lost on the way.
    async fn both_hear_after(&mut self, since_us: u64, within: Duration, log: &mut Log) {
        heard_after(&mut self.host, self.peer_id, since_us, within, log).await;
        heard_after(&mut self.peer, 0, since_us, within, log).await;
    }
}

/// What the players reported along the way.
#[derive(Debug, Default)]
struct Log {
    /// Datagrams missing, summed over every gap report.
    lost: u64,
    /// The largest single gap.
    largest_gap: u64,
    /// Datagrams received.
    received: u64,
}

/// Reads `player`'s reports until one shows a datagram from `from` arriving after
/// `since_us`. Any sign of a broken session (a member lost, a disconnect, a misdelivered
/// datagram) fails the test.
async fn heard_after(
    player: &mut LabPlayer,
    from: u16,
    since_us: u64,
    within: Duration,
    log: &mut Log,
) {
    player
        .next_matching(within, |report| match report {
            Report::Stats {
                received,
                last_from,
                ..
            } => {
                log.received += received;
                last_from.iter().any(|&(p, t)| p == from && t > since_us)
            }
            Report::Gap { lost, .. } => {
                log.lost += lost;
                log.largest_gap = log.largest_gap.max(*lost);
                false
            }
            Report::PathChanged { .. } => {
                eprintln!("while waiting for datagrams: {report:?}");
                false
            }
            Report::PeerLeft { .. }
            | Report::HostLost { .. }
            | Report::Disconnected { .. }
            | Report::Violation { .. } => panic!("the session broke: {report:?}"),
            _ => false,
        })
        .await
        .unwrap_or_else(|e| panic!("no datagram from peer {from} after the mark: {e:#}"));
}

/// The addresses the relay sees for the game's members, by peer id.
async fn seen_addrs(relay: &LabRelay) -> Vec<(u16, SocketAddr)> {
    let allocations = relay.allocations().await.expect("allocations");
    let members = allocations["allocations"][0]["members"]
        .as_array()
        .expect("members")
        .clone();
    members
        .iter()
        .map(|m| {
            let peer = m["peer"].as_u64().expect("peer") as u16;
            let addr = m["addr"].as_str().expect("addr").parse().expect("address");
            (peer, addr)
        })
        .collect()
}

/// Checks that the relay sees member `peer` at the outside address of site `site`'s
/// mapping to the relay, and returns that address.
fn check_seen(
    lab: &Lab,
    relay: &LabRelay,
    seen: &[(u16, SocketAddr)],
    peer: u16,
    site: usize,
) -> SocketAddr {
    let s = lab.site(site);
    let addr = seen
        .iter()
        .find(|(p, _)| *p == peer)
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("member {peer} not listed: {seen:?}"));
    assert_eq!(
        addr.ip(),
        std::net::IpAddr::from(s.wan_ip),
        "member {peer} seen at its WAN address"
    );
    let relay_v4 = match relay.addr() {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => panic!("the lab is IPv4"),
    };
    let mappings = lab.mappings(site).expect("mappings");
    let mapping = mappings
        .iter()
        .find(|m| m.remote == relay_v4 && *m.inside.ip() == s.client_ip)
        .unwrap_or_else(|| panic!("no mapping to the relay on site {site}: {mappings:?}"));
    assert_eq!(
        SocketAddr::V4(mapping.outside),
        addr,
        "the relay sees the router's mapping"
    );
    match s.mode {
        NatMode::Cone => assert_eq!(mapping.outside.port(), mapping.inside.port(), "port kept"),
        NatMode::Symmetric => assert!((10000..=29999).contains(&addr.port()), "{addr}"),
        NatMode::None => {}
    }
    addr
}

/// A host in site 1 and a peer in site 2 exchange datagrams both ways through the relay,
/// which sees each at its router's outside address.
async fn relayed_pair(host_mode: NatMode, peer_mode: NatMode) {
    let Some(lab) = lab(&[host_mode, peer_mode]) else {
        return;
    };
    let mut game = Game::start(&lab, 1, 2, &[]).await;
    let mut log = Log::default();
    let start = now_us();
    game.both_hear_after(start, WAIT, &mut log).await;
    let seen = seen_addrs(&game.relay).await;
    check_seen(&lab, &game.relay, &seen, 0, 1);
    check_seen(&lab, &game.relay, &seen, game.peer_id, 2);
    let metrics = game.relay.metrics().await.expect("metrics");
    assert!(metrics.value("baton_datagrams_forwarded_total") > 0.0);
    eprintln!("{host_mode:?} host, {peer_mode:?} peer: relayed, seen at {seen:?}; {log:?}");
    game.peer.close(WAIT).await.expect("peer leaves");
    game.host.close(WAIT).await.expect("host leaves");
}

#[tokio::test]
async fn cone_host_and_symmetric_peer_play_through_the_relay() {
    relayed_pair(NatMode::Cone, NatMode::Symmetric).await;
}

#[tokio::test]
async fn symmetric_host_and_symmetric_peer_play_through_the_relay() {
    relayed_pair(NatMode::Symmetric, NatMode::Symmetric).await;
}

#[tokio::test]
async fn cone_host_and_cone_peer_play_through_the_relay() {
    relayed_pair(NatMode::Cone, NatMode::Cone).await;
}

/// Each site's NAT rebinds mid-game (the peer's symmetric one, then the host's cone one):
/// the relay sees the new outside address, no connection is made anew, nobody leaves, and
/// datagrams flow again both ways with little loss.
#[tokio::test]
async fn a_rebinding_nat_keeps_the_session() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::Symmetric]) else {
        return;
    };
    let mut game = Game::start(&lab, 1, 2, &[]).await;
    let mut log = Log::default();
    game.both_hear_after(now_us(), WAIT, &mut log).await;
    let before = game.relay.metrics().await.expect("metrics");
    let lost_before = log.lost;
    for site in [2, 1] {
        let old = lab.mappings(site).expect("mappings");
        lab.rebind(site).expect("rebind");
        // The old mapping is gone from the router, so what either side hears from now on
        // crossed the new one: the relay must be sending to the new address. Datagrams
        // arriving 200 ms after the rebind (10 ticks) were all sent after it.
        let mark = now_us() + 200_000;
        game.both_hear_after(mark, WAIT, &mut log).await;
        let new = lab.mappings(site).expect("mappings");
        let relay_port = game.relay.addr().port();
        let outside = |ms: &[Mapping]| {
            ms.iter()
                .find(|m| m.remote.port() == relay_port)
                .map(|m| m.outside)
        };
        let (old, new) = (outside(&old), outside(&new));
        assert!(
            old.is_some() && new.is_some() && old != new,
            "site {site}: {old:?} -> {new:?}"
        );
        eprintln!("site {site} rebound: {old:?} -> {new:?}");
    }
    let after = game.relay.metrics().await.expect("metrics");
    assert_eq!(
        after.value("baton_connections_accepted_total"),
        before.value("baton_connections_accepted_total"),
        "the same QUIC connections carried on (migration), none was made anew"
    );
    assert_eq!(
        after.value("baton_members_left_total"),
        before.value("baton_members_left_total")
    );
    // Datagrams lost over two rebinds, both directions, at 50 a second each way.
    let lost = log.lost - lost_before;
    eprintln!(
        "two rebinds: {lost} datagrams lost (largest gap {}); {log:?}",
        log.largest_gap
    );
    assert!(
        lost <= 2 * RATE as u64,
        "at most a second's worth of loss: {lost}"
    );
}

/// The peer's link is down for 2 s, well within the relay's 10 s keepalive: the session
/// survives, datagrams sent during the cut are lost, and traffic resumes both ways.
#[tokio::test]
async fn a_link_cut_shorter_than_the_keepalive_keeps_the_session() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::Symmetric]) else {
        return;
    };
    let mut game = Game::start(&lab, 1, 2, &["--keepalive-timeout", "10s"]).await;
    let mut log = Log::default();
    game.both_hear_after(now_us(), WAIT, &mut log).await;
    let before = game.relay.metrics().await.expect("metrics");
    lab.cut(2).expect("cut");
    let cut_at = std::time::Instant::now();
    // Two seconds of silence, measured by the host: its reports show nothing from the peer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.restore(2).expect("restore");
    let outage = cut_at.elapsed();
    let mark = now_us();
    let lost_before = log.lost;
    game.both_hear_after(mark, WAIT, &mut log).await;
    let lost = log.lost - lost_before;
    let after = game.relay.metrics().await.expect("metrics");
    assert_eq!(
        after.value("baton_members_left_total"),
        before.value("baton_members_left_total"),
        "nobody left"
    );
    assert_eq!(
        after.value("baton_connections_accepted_total"),
        before.value("baton_connections_accepted_total"),
        "no reconnect"
    );
    eprintln!(
        "cut {outage:?}: {lost} datagrams lost, largest gap {}; {log:?}",
        log.largest_gap
    );
    // The cut really cut: each direction lost most of the outage (50 a second), and no more
    // than the outage plus a second.
    let per_direction = RATE as u64 * outage.as_millis() as u64 / 1000;
    assert!(
        log.largest_gap >= per_direction / 2,
        "largest gap {} for {outage:?}",
        log.largest_gap
    );
    assert!(
        lost <= 2 * (per_direction + RATE as u64),
        "{lost} lost for {outage:?}"
    );
}

/// Waits for `player` to report that datagrams with `peer` take `path`; any sign of a broken
/// session fails the test.
/// The NAT kind `player` measured (its first stats report that names one), within `within`.
async fn measured_nat(player: &mut LabPlayer, within: Duration) -> String {
    let (_, report) = player
        .next_matching(within, |report| {
            matches!(report, Report::Stats { nat, .. } if nat != NatKind::Unknown.as_str())
        })
        .await
        .unwrap_or_else(|e| panic!("no NAT measured: {e:#}"));
    match report {
        Report::Stats { nat, .. } => nat,
        _ => unreachable!("matched a stats report"),
    }
}

async fn path_is(player: &mut LabPlayer, peer: u16, path: &str, within: Duration, log: &mut Log) {
    player
        .next_matching(within, |report| match report {
            Report::PathChanged {
                peer: p,
                path: now,
                rtt_us,
            } => {
                eprintln!("path to peer {p}: {now} (rtt {rtt_us} µs)");
                *p == peer && now == path
            }
            Report::Gap { lost, .. } => {
                log.lost += lost;
                log.largest_gap = log.largest_gap.max(*lost);
                false
            }
            Report::PeerLeft { .. }
            | Report::HostLost { .. }
            | Report::Disconnected { .. }
            | Report::Violation { .. } => panic!("the session broke: {report:?}"),
            _ => false,
        })
        .await
        .unwrap_or_else(|e| panic!("no {path} path to peer {peer}: {e:#}"));
}

/// A host and a peer behind two cone NATs punch a direct path: their datagrams stop going
/// through the relay. When the direct path is cut (the host's router drops everything to and
/// from the peer's router, the relay still reachable) both fall back to the relay within a
/// couple of seconds, without a disconnect, and datagrams flow through the relay again.
#[tokio::test]
async fn cone_nats_go_direct_and_fall_back_to_the_relay_when_cut() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::Cone]) else {
        return;
    };
    let (mut game, mut log) = Game::start_direct(&lab).await;
    let peer_id = game.peer_id;
    // Datagrams already in flight through the relay arrive within a few ticks.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let forwarded = "baton_datagrams_forwarded_total";
    let before = game
        .relay
        .metrics()
        .await
        .expect("metrics")
        .value(forwarded);
    game.both_hear_after(now_us(), WAIT, &mut log).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    game.both_hear_after(now_us(), WAIT, &mut log).await;
    let metrics = game.relay.metrics().await.expect("metrics");
    assert_eq!(
        metrics.value(forwarded),
        before,
        "datagrams went through the relay; reports: {:?}",
        metrics.by_label("baton_direct_paths_total", "reason")
    );
    assert!(
        metrics.value("baton_direct_paths_total{outcome=\"direct\",reason=\"direct\"}") >= 2.0,
        "both reported the direct path"
    );
    // Both measured their NAT through the probe port (endpoint-independent: had either been
    // unknown or endpoint-dependent the pair would still punch, but two cones must not be
    // taken for symmetric ones).
    assert!(
        metrics.value("baton_nat_probes_total{result=\"answered\"}") >= 2.0,
        "both players probed"
    );
    assert_eq!(
        metrics.value(
            "baton_direct_paths_total{outcome=\"relayed\",reason=\"both_endpoint_dependent\"}"
        ),
        0.0
    );
    for player in [&mut game.host, &mut game.peer] {
        assert_eq!(
            measured_nat(player, WAIT).await,
            NatKind::EndpointIndependent.as_str(),
            "a cone NAT measured as endpoint-independent"
        );
    }

    let peer_wan = lab.site(2).wan_ip;
    lab.cut_to(1, peer_wan).expect("cut the direct path");
    let cut = std::time::Instant::now();
    let within = Duration::from_secs(4);
    path_is(&mut game.host, peer_id, "relayed", within, &mut log).await;
    path_is(&mut game.peer, 0, "relayed", within, &mut log).await;
    let fell_back = cut.elapsed();
    game.both_hear_after(now_us(), WAIT, &mut log).await;
    let after = game.relay.metrics().await.expect("metrics");
    assert!(after.value(forwarded) > before, "back through the relay");
    assert_eq!(
        after.value("baton_members_left_total"),
        metrics.value("baton_members_left_total"),
        "nobody left"
    );
    eprintln!("cone ↔ cone: direct, then relayed {fell_back:?} after the cut; {log:?}");
    assert!(fell_back < within);
    lab.restore(1).expect("restore");
    game.peer.close(WAIT).await.expect("peer leaves");
    game.host.close(WAIT).await.expect("host leaves");
}

/// Two symmetric NATs: each player measures its NAT through the relay's probe port (SPEC
/// 17.5) as endpoint-dependent, so the pair does not punch at all (a punch cannot cross two
/// such NATs): both report `both_endpoint_dependent` well before a punch could have timed out
/// (3 s), none reports `punch_timed_out`, and the game goes on through the relay.
#[tokio::test]
async fn symmetric_nats_stay_relayed_with_direct_paths_preferred() {
    let Some(lab) = lab(&[NatMode::Symmetric, NatMode::Symmetric]) else {
        return;
    };
    let started = std::time::Instant::now();
    let mut game = Game::start_with(&lab, 1, 2, &[], true).await;
    let joined = started.elapsed();
    let mut log = Log::default();
    let reports = await_direct_reports(&game.relay, 2).await;
    let decided = started.elapsed() - joined;
    eprintln!(
        "symmetric ↔ symmetric: direct-path reports {reports:?} {decided:?} after the peer joined"
    );
    assert_eq!(
        reports.get("both_endpoint_dependent"),
        Some(&2),
        "both measured endpoint-dependent NATs: {reports:?}"
    );
    assert_eq!(reports.get("punch_timed_out"), None, "{reports:?}");
    assert_eq!(reports.get("direct"), None, "{reports:?}");
    for player in [&mut game.host, &mut game.peer] {
        assert_eq!(
            measured_nat(player, WAIT).await,
            NatKind::EndpointDependent.as_str(),
            "a symmetric NAT measured as endpoint-dependent"
        );
    }
    // The player's join itself takes some of that time; the verdict needs the probe (at most
    // 1 s) and the offers, not a punch timeout.
    assert!(
        decided < Duration::from_millis(2500),
        "the verdict took {decided:?}, as long as a punch"
    );
    let probes = game.relay.metrics().await.expect("metrics");
    assert!(
        probes.value("baton_nat_probes_total{result=\"answered\"}") >= 2.0,
        "both players probed"
    );
    let before = game
        .relay
        .metrics()
        .await
        .expect("metrics")
        .value("baton_datagrams_forwarded_total");
    game.both_hear_after(now_us(), WAIT, &mut log).await;
    let after = game
        .relay
        .metrics()
        .await
        .expect("metrics")
        .value("baton_datagrams_forwarded_total");
    assert!(after > before, "relayed");
    game.peer.close(WAIT).await.expect("peer leaves");
    game.host.close(WAIT).await.expect("host leaves");
}

/// The direct-path reports the relay has counted (`baton_direct_paths_total`), by reason
/// (SPEC section 17.4), leaving out zeros.
async fn direct_reports(relay: &LabRelay) -> std::collections::BTreeMap<String, u64> {
    let metrics = relay.metrics().await.expect("metrics");
    let reasons = [
        ("direct", "direct"),
        ("relayed", "punch_timed_out"),
        ("relayed", "both_endpoint_dependent"),
        ("relayed", "policy_never"),
        ("relayed", "relay_declined"),
        ("relayed", "no_candidates"),
        ("relayed", "direct_lost"),
        ("relayed", "relay_faster"),
    ];
    reasons
        .iter()
        .filter_map(|(outcome, reason)| {
            let name =
                format!("baton_direct_paths_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}");
            let count = metrics.value(&name) as u64;
            (count > 0).then(|| ((*reason).to_owned(), count))
        })
        .collect()
}

/// Waits until the relay has counted at least `count` direct-path reports; returns them by
/// reason.
async fn await_direct_reports(
    relay: &LabRelay,
    count: u64,
) -> std::collections::BTreeMap<String, u64> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reports = direct_reports(relay).await;
        if reports.values().sum::<u64>() >= count {
            return reports;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {reports:?} direct-path reports"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The relay's count of forwarded datagrams.
async fn forwarded(relay: &LabRelay) -> f64 {
    relay
        .metrics()
        .await
        .expect("metrics")
        .value("baton_datagrams_forwarded_total")
}

/// Checks that host and peer exchange datagrams for a while without the relay forwarding
/// any (what was in flight through it having arrived).
async fn plays_without_the_relay(game: &mut Game, log: &mut Log) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = forwarded(&game.relay).await;
    game.both_hear_after(now_us(), WAIT, log).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    game.both_hear_after(now_us(), WAIT, log).await;
    assert_eq!(
        forwarded(&game.relay).await,
        before,
        "datagrams went through the relay"
    );
}

/// The one-way latencies (µs; every lab namespace shares the machine's clock) `player`
/// reports for `span`; any sign of a broken session fails the test.
async fn latencies(player: &mut LabPlayer, span: Duration, log: &mut Log) -> Vec<u64> {
    let end = std::time::Instant::now() + span;
    let mut samples = Vec::new();
    let _ = player
        .next_matching(span + WAIT, |report| {
            match report {
                Report::Stats { latency_us, .. } => samples.extend_from_slice(latency_us),
                Report::Gap { lost, .. } => {
                    log.lost += lost;
                    log.largest_gap = log.largest_gap.max(*lost);
                }
                Report::PeerLeft { .. }
                | Report::HostLost { .. }
                | Report::Disconnected { .. }
                | Report::Violation { .. } => panic!("the session broke: {report:?}"),
                _ => {}
            }
            std::time::Instant::now() >= end
        })
        .await
        .expect("reports");
    samples
}

/// The 50th and 99th percentiles of `samples` (sorted in place), µs.
fn p50_p99(samples: &mut [u64]) -> (u64, u64) {
    assert!(!samples.is_empty(), "no latency samples");
    samples.sort_unstable();
    let at = |q: usize| samples[(samples.len() - 1) * q / 100];
    (at(50), at(99))
}

/// Both players' one-way latencies over `span`, host and peer measured at once.
async fn game_latencies(game: &mut Game, span: Duration, log: &mut Log) -> Vec<u64> {
    let mut peer_log = Log::default();
    let (mut a, b) = tokio::join!(
        latencies(&mut game.host, span, log),
        latencies(&mut game.peer, span, &mut peer_log)
    );
    log.lost += peer_log.lost;
    log.largest_gap = log.largest_gap.max(peer_log.largest_gap);
    a.extend(b);
    a
}

/// Datagram latency through the direct path and through the relay, in the same run between
/// two cone NATs: 3 s of traffic each way on the punched path, then the direct path is cut
/// and 3 s more go through the relay. Prints p50/p99 of each and their ratio (the README's
/// figures); the direct path is no slower at the median.
#[tokio::test]
async fn cone_nats_datagram_latency_direct_versus_relayed() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::Cone]) else {
        return;
    };
    let (mut game, mut log) = Game::start_direct(&lab).await;
    let peer_id = game.peer_id;
    plays_without_the_relay(&mut game, &mut log).await;
    let span = Duration::from_secs(3);
    let mut direct = game_latencies(&mut game, span, &mut log).await;
    lab.cut_to(1, lab.site(2).wan_ip)
        .expect("cut the direct path");
    path_is(&mut game.host, peer_id, "relayed", WAIT, &mut log).await;
    path_is(&mut game.peer, 0, "relayed", WAIT, &mut log).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = forwarded(&game.relay).await;
    let mut relayed = game_latencies(&mut game, span, &mut log).await;
    assert!(forwarded(&game.relay).await > before, "through the relay");
    // Two players at 50 a second for 3 s: most of 300 samples each way.
    for samples in [&direct, &relayed] {
        assert!(samples.len() >= 200, "{} samples", samples.len());
    }
    let (d50, d99) = p50_p99(&mut direct);
    let (r50, r99) = p50_p99(&mut relayed);
    eprintln!(
        "one-way datagram latency, cone ↔ cone: direct p50 {d50} µs p99 {d99} µs ({} samples), \
         relayed p50 {r50} µs p99 {r99} µs ({} samples); direct/relayed p50 {:.2}, p99 {:.2}; {log:?}",
        direct.len(),
        relayed.len(),
        d50 as f64 / r50 as f64,
        d99 as f64 / r99 as f64,
    );
    assert!(d50 <= r50, "direct p50 {d50} µs, relayed {r50} µs");
    lab.restore(1).expect("restore");
    game.peer.close(WAIT).await.expect("peer leaves");
    game.host.close(WAIT).await.expect("host leaves");
}

/// A cone NAT facing a public host: the punch crosses (the public host has no filter, and
/// the cone router lets in what comes from where it sent), the game goes direct and the
/// relay forwards nothing between them.
#[tokio::test]
async fn cone_nat_and_public_host_go_direct() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::None]) else {
        return;
    };
    let (mut game, mut log) = Game::start_direct(&lab).await;
    plays_without_the_relay(&mut game, &mut log).await;
    let reports = direct_reports(&game.relay).await;
    assert_eq!(reports.get("direct"), Some(&2), "{reports:?}");
    eprintln!("cone ↔ public: direct; {log:?}");
    game.peer.close(WAIT).await.expect("peer leaves");
    game.host.close(WAIT).await.expect("host leaves");
}

/// A cone NAT facing a symmetric one, direct paths preferred: the symmetric router writes
/// to the cone host from another outside port than the one the relay saw, and the cone
/// router's filter lets in only the port it wrote to, so the punch times out and the game
/// stays relayed; either way datagrams flow both ways and nobody is lost.
#[tokio::test]
async fn cone_and_symmetric_nats_with_direct_paths_preferred_keep_playing() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::Symmetric]) else {
        return;
    };
    let mut game = Game::start_with(&lab, 1, 2, &[], true).await;
    let mut log = Log::default();
    let reports = await_direct_reports(&game.relay, 2).await;
    eprintln!("cone ↔ symmetric: direct-path reports {reports:?}");
    let before = forwarded(&game.relay).await;
    game.both_hear_after(now_us(), WAIT, &mut log).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    game.both_hear_after(now_us(), WAIT, &mut log).await;
    let after = forwarded(&game.relay).await;
    if reports.get("direct").copied().unwrap_or(0) >= 2 {
        assert_eq!(
            after, before,
            "direct, yet datagrams went through the relay"
        );
    } else {
        assert!(after > before, "relayed, yet the relay forwarded nothing");
    }
    assert_eq!(
        reports.get("punch_timed_out"),
        Some(&2),
        "the lab's cone filter stops a symmetric NAT's punch: {reports:?}"
    );
    eprintln!("cone ↔ symmetric: relayed after the punch timed out; {log:?}");
    game.peer.close(WAIT).await.expect("peer leaves");
    game.host.close(WAIT).await.expect("host leaves");
}

/// Two cone NATs on a direct path, then the host's router rebinds (new outside ports, its
/// conntrack table flushed): the path recovers (direct again, or the relay) and datagrams
/// flow both ways again within 3 s, with the loss counted; nobody leaves, no reconnect.
#[tokio::test]
async fn a_rebinding_nat_on_a_direct_path_recovers() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::Cone]) else {
        return;
    };
    let (mut game, mut log) = Game::start_direct(&lab).await;
    plays_without_the_relay(&mut game, &mut log).await;
    let before = game.relay.metrics().await.expect("metrics");
    let lost_before = log.lost;
    lab.rebind(1).expect("rebind");
    let rebound = std::time::Instant::now();
    // Datagrams arriving 200 ms after the rebind (10 ticks) were sent after it.
    let mark = now_us() + 200_000;
    let bound = Duration::from_secs(3);
    game.both_hear_after(mark, bound, &mut log).await;
    let resumed = rebound.elapsed();
    let forwarded_then = forwarded(&game.relay).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    game.both_hear_after(now_us(), WAIT, &mut log).await;
    let path = if forwarded(&game.relay).await > forwarded_then {
        "relayed"
    } else {
        "direct"
    };
    let after = game.relay.metrics().await.expect("metrics");
    assert_eq!(
        after.value("baton_members_left_total"),
        before.value("baton_members_left_total"),
        "nobody left"
    );
    assert_eq!(
        after.value("baton_connections_accepted_total"),
        before.value("baton_connections_accepted_total"),
        "no reconnect to the relay"
    );
    let lost = log.lost - lost_before;
    eprintln!(
        "direct path, host's NAT rebound: datagrams both ways again after {resumed:?}, \
         {lost} lost (largest gap {}), then {path}; {log:?}",
        log.largest_gap
    );
    assert!(resumed < bound);
    assert!(
        lost <= 2 * 3 * RATE as u64,
        "at most 3 s of loss each way: {lost}"
    );
    game.peer.close(WAIT).await.expect("peer leaves");
    game.host.close(WAIT).await.expect("host leaves");
}

/// Waits for `player`'s report of a host migration; the new host and the members.
async fn migrated(player: &mut LabPlayer) -> (u16, Vec<u16>) {
    match player
        .next_matching(WAIT, |r| matches!(r, Report::HostMigrated { .. }))
        .await
        .expect("host migrated")
        .1
    {
        Report::HostMigrated {
            new_host, members, ..
        } => (new_host, members),
        _ => unreachable!(),
    }
}

/// A host and two peers, each behind its own cone NAT, on direct paths; the host leaves.
/// One peer takes over, and the new host and the other peer punch a direct path between
/// them: their datagrams stop going through the relay.
#[tokio::test]
async fn after_a_host_migration_behind_cone_nats_the_new_host_goes_direct() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::Cone, NatMode::Cone]) else {
        return;
    };
    let mut game = Game::start_with(&lab, 1, 2, &[], true).await;
    let code = game.host.code().expect("join code").to_owned();
    let args = PlayerArgs {
        direct: true,
        ..player_args(&game.relay, Role::Join { code })
    };
    let mut third = LabPlayer::start(&lab, &lab.site(3).host_ns, Path::new(PLAYER), &args, WAIT)
        .await
        .expect("third joins");
    let third_id = third.peer().expect("peer id");
    let mut log = Log::default();
    path_is(&mut game.peer, 0, "direct", WAIT, &mut log).await;
    path_is(&mut third, 0, "direct", WAIT, &mut log).await;

    let Game {
        relay,
        host,
        mut peer,
        peer_id,
    } = game;
    host.close(WAIT).await.expect("host leaves");
    let ((new_a, members), (new_b, _)) = tokio::join!(migrated(&mut peer), migrated(&mut third));
    assert_eq!(new_a, new_b, "both follow the same new host");
    assert!(
        members.contains(&peer_id) && members.contains(&third_id),
        "{members:?}"
    );
    let (mut new_host, mut other, other_id) = if new_a == peer_id {
        (peer, third, third_id)
    } else {
        (third, peer, peer_id)
    };
    let elected = new_a;
    path_is(&mut other, elected, "direct", WAIT, &mut log).await;
    path_is(&mut new_host, other_id, "direct", WAIT, &mut log).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = forwarded(&relay).await;
    heard_after(&mut new_host, other_id, now_us(), WAIT, &mut log).await;
    heard_after(&mut other, elected, now_us(), WAIT, &mut log).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    heard_after(&mut new_host, other_id, now_us(), WAIT, &mut log).await;
    heard_after(&mut other, elected, now_us(), WAIT, &mut log).await;
    assert_eq!(
        forwarded(&relay).await,
        before,
        "datagrams went through the relay"
    );
    eprintln!("migration behind cone NATs: new host {elected} and peer {other_id} direct; {log:?}");
    other.close(WAIT).await.expect("peer leaves");
    new_host.close(WAIT).await.expect("new host leaves");
}

/// What a player reported over a watch.
#[derive(Debug, Default)]
struct Watch {
    /// Each `PathChanged`: the other member, its new path and RTT (µs).
    changes: Vec<(u16, String, u64)>,
    /// Datagrams received.
    received: u64,
    /// Datagrams missing, summed over every gap report.
    lost: u64,
    /// When the latest datagram from the other member arrived (Unix µs).
    last_from_other: u64,
}

/// Reads `player`'s reports for `span`, recording path changes and traffic from `other`. Any
/// sign of a broken session (a member lost, a disconnect, a misdelivered datagram, the player
/// exiting) fails the test.
async fn watch(player: &mut LabPlayer, other: u16, span: Duration, seen: &mut Watch) {
    let deadline = tokio::time::Instant::now() + span;
    let result = player
        .next_matching(span, |report| match report {
            Report::PathChanged { peer, path, rtt_us } => {
                eprintln!("path to peer {peer}: {path} (rtt {rtt_us} µs)");
                seen.changes.push((*peer, path.clone(), *rtt_us));
                false
            }
            Report::Stats {
                received,
                last_from,
                ..
            } => {
                seen.received += received;
                if let Some(&(_, t)) = last_from.iter().find(|&&(p, _)| p == other) {
                    seen.last_from_other = seen.last_from_other.max(t);
                }
                false
            }
            Report::Gap { lost, .. } => {
                seen.lost += lost;
                false
            }
            Report::PeerLeft { .. }
            | Report::HostLost { .. }
            | Report::Disconnected { .. }
            | Report::Violation { .. } => panic!("the session broke: {report:?}"),
            _ => false,
        })
        .await;
    // Nothing matches: the span runs out (give or take the timer's rounding), unless the
    // player's output ended.
    if let Err(e) = result {
        assert!(
            tokio::time::Instant::now() + Duration::from_millis(500) >= deadline,
            "{e:#}"
        );
    }
}

/// The host's link is slow and lossy both ways (5 % loss, 50 ms delay, up to 10 ms jitter, by
/// the SDK's network simulator in the host's player), behind two cone NATs with direct paths
/// preferred. Over 30 s (10 s to go direct, then 20 s of play) the path does not flap: each
/// side reports at most one path change, to direct (with an RTT of at least the 100 ms the
/// host's link adds); nobody disconnects, and datagrams keep arriving both ways.
#[tokio::test]
async fn a_slow_lossy_host_link_goes_direct_without_flapping() {
    let Some(lab) = lab(&[NatMode::Cone, NatMode::Cone]) else {
        return;
    };
    let relay = LabRelay::start(&lab, &relay_bin(), RELAY_IP, &[], WAIT)
        .await
        .expect("relay starts in the internet namespace");
    let player = Path::new(PLAYER);
    let host_args = PlayerArgs {
        direct: true,
        netsim: Some(
            "loss=5%,delay=50ms,jitter=10ms,seed=12"
                .parse()
                .expect("simulator settings"),
        ),
        ..player_args(&relay, Role::Host { snapshot_bytes: 0 })
    };
    let mut host = LabPlayer::start(&lab, &lab.site(1).host_ns, player, &host_args, WAIT)
        .await
        .expect("host enters");
    let code = host.code().expect("join code").to_owned();
    // The peer joins a game whose host has played a while, so the relay has measured the host's
    // RTT (it samples members' RTTs every 2 s) when it times the punches, which tells the peer
    // how slow the host's side of the relayed path is (SPEC section 17.2).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peer_args = PlayerArgs {
        direct: true,
        ..player_args(&relay, Role::Join { code })
    };
    let mut peer = LabPlayer::start(&lab, &lab.site(2).host_ns, player, &peer_args, WAIT)
        .await
        .expect("peer joins");
    let peer_id = peer.peer().expect("peer id");

    // The time to go direct (the handshakes cross the slow link, and a lost punch round is
    // retried after 2 s), then 20 s of play.
    let (mut host_seen, mut peer_seen) = (Watch::default(), Watch::default());
    let span = WAIT + Duration::from_secs(20);
    let start = now_us();
    tokio::join!(
        watch(&mut host, peer_id, span, &mut host_seen),
        watch(&mut peer, 0, span, &mut peer_seen),
    );
    let end = now_us();
    eprintln!("slow lossy host link: host {host_seen:?}; peer {peer_seen:?}");
    for (who, seen, other) in [("host", &host_seen, peer_id), ("peer", &peer_seen, 0)] {
        let changes: Vec<_> = seen
            .changes
            .iter()
            .map(|(p, path, _)| (*p, path.as_str()))
            .collect();
        // In the lab the relay is as near as the other member, so both paths cross the same
        // slow link and their RTTs are close: a side may legitimately stay relayed. What it
        // must not do is switch back and forth.
        assert!(
            changes.is_empty() || changes == [(other, "direct")],
            "{who}: the path flapped: {changes:?}"
        );
        if let Some(&(_, _, rtt_us)) = seen.changes.first() {
            assert!(
                rtt_us >= 100_000,
                "{who}: direct RTT {rtt_us} µs is under the 100 ms the simulator adds"
            );
        }
        // RATE a second; the host's link loses 5 % each way.
        let expected = u64::from(RATE) * span.as_secs();
        assert!(
            seen.received >= expected * 8 / 10,
            "{who}: received {} of about {expected} in {span:?}",
            seen.received
        );
        assert!(
            seen.last_from_other > start && end - seen.last_from_other < 1_000_000,
            "{who}: datagrams stopped arriving"
        );
    }
    peer.close(WAIT).await.expect("peer leaves");
    host.close(WAIT).await.expect("host leaves");
}
