//! What the directory stores, and its text form: node ids, node records, join-code and
//! allocation records. Every value read back is length-checked before it is parsed, and parsed
//! strictly (no whitespace, no sign, no case folding): a value this module did not write is
//! reported, never guessed at.

use std::fmt;
use std::net::SocketAddr;

/// Longest node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;
/// Longest TLS server name a node may advertise (a DNS name's limit).
pub const MAX_SERVER_NAME_LEN: usize = 253;
/// Longest region name.
pub const MAX_REGION_LEN: usize = 64;
/// Longest join code the directory accepts, in bytes.
pub const MAX_CODE_LEN: usize = 32;
/// Longest single value (a hash field or a string key's value) read from the store; anything
/// longer is corrupt without being looked at.
pub const MAX_VALUE_LEN: usize = 256;
/// Longest admin address a node may advertise (`host:port`), in bytes: a stored value's limit.
pub const MAX_ADMIN_ADDR_LEN: usize = MAX_VALUE_LEN;

/// Why a string is not a node id (or another name the directory stores).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or longer than the limit.
    #[error("must be 1 to {max} bytes, got {len}")]
    Length {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A byte outside the allowed set.
    #[error("byte {0:#04x} is not allowed")]
    Byte(u8),
}

/// Checks `s` is 1 to `max` bytes, each accepted by `allowed`.
fn check_name(s: &[u8], max: usize, allowed: impl Fn(u8) -> bool) -> Result<(), NameError> {
    if s.is_empty() || s.len() > max {
        return Err(NameError::Length { len: s.len(), max });
    }
    match s.iter().find(|&&b| !allowed(b)) {
        Some(&b) => Err(NameError::Byte(b)),
        None => Ok(()),
    }
}

/// `[A-Za-z0-9._-]`: the bytes of node ids and regions.
fn id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Checks a region name: 1 to [`MAX_REGION_LEN`] bytes of `[A-Za-z0-9._-]`.
pub fn check_region(region: &str) -> Result<(), NameError> {
    check_name(region.as_bytes(), MAX_REGION_LEN, id_byte)
}

/// Checks an admin address other nodes may reach: `host:port`, the host an IPv4 address, an
/// IPv6 address in brackets or a DNS name, the port 1 to 65535; at most
/// [`MAX_ADMIN_ADDR_LEN`] bytes. It is put in `http://{addr}/...` as it is.
pub fn check_admin_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty() || addr.len() > MAX_ADMIN_ADDR_LEN {
        return Err(format!("must be 1 to {MAX_ADMIN_ADDR_LEN} bytes"));
    }
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return match socket.port() {
            0 => Err("port 0 cannot be reached".to_owned()),
            _ => Ok(()),
        };
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    // An IP address would have parsed above; what is left must be a DNS name.
    if host.parse::<std::net::IpAddr>().is_ok()
        || host.contains(['[', ']', ':'])
        || !baton_protocol::server_name::is_valid(host)
    {
        return Err(format!(
            "{host:?} is not a DNS name, an IPv4 address or [IPv6]"
        ));
    }
    match parse_decimal(port).and_then(|p| u16::try_from(p).ok()) {
        Some(1..) => Ok(()),
        _ => Err(format!("port {port:?} is not 1 to 65535")),
    }
}

/// A relay node's id in the fleet: 1 to 64 bytes of `[A-Za-z0-9._-]`, so it is safe inside a
/// key and a space-separated value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Validates `s` as a node id.
    pub fn parse(s: &str) -> Result<NodeId, NameError> {
        check_name(s.as_bytes(), MAX_NODE_ID_LEN, id_byte)?;
        Ok(NodeId(s.to_owned()))
    }

    /// Validates raw bytes read from the store.
    fn from_bytes(raw: &[u8]) -> Result<NodeId, NameError> {
        check_name(raw, MAX_NODE_ID_LEN, id_byte)?;
        // Checked ASCII above.
        Ok(NodeId(String::from_utf8_lossy(raw).into_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// Checks a join code the directory is asked to store or look up: 1 to [`MAX_CODE_LEN`] bytes
/// of `[A-Za-z0-9]` (the relay's codes are a subset).
pub fn check_code(code: &str) -> Result<(), NameError> {
    check_name(code.as_bytes(), MAX_CODE_LEN, |b| b.is_ascii_alphanumeric())
}

/// Whether a node takes new allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Takes new allocations.
    Active,
    /// Takes none; its allocations are being moved elsewhere.
    Draining,
}

impl NodeState {
    /// The stored form: `active` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
        }
    }

    fn parse(raw: &[u8]) -> Option<NodeState> {
        match raw {
            b"active" => Some(NodeState::Active),
            b"draining" => Some(NodeState::Draining),
            _ => None,
        }
    }
}

/// One node as its heartbeat describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// The QUIC address clients are sent to.
    pub addr: SocketAddr,
    /// The TLS server name clients check the node's certificate against: 1 to 253 bytes of
    /// printable ASCII without spaces.
    pub server_name: String,
    /// The node's region: 1 to 64 bytes of `[A-Za-z0-9._-]`.
    pub region: String,
    /// Whether it takes new allocations.
    pub state: NodeState,
    /// Live allocations on the node.
    pub allocations: u64,
    /// Open QUIC connections on the node.
    pub connections: u64,
    /// CPU use, percent of one core (may exceed 100 on several cores); finite, not negative.
    pub cpu_pct: f32,
    /// The `host:port` of the node's admin API as other nodes reach it (see
    /// [`check_admin_addr`]), where a reservation placed on this node is forwarded. `None`
    /// (no admin server, or a record written before nodes published it): reservations are
    /// placed here only through this node's own admin API.
    pub admin_addr: Option<String>,
}

/// The hash fields of a node record, in the order [`NodeInfo::fields`] writes them and
/// [`NodeInfo::from_fields`] reads them. The first [`REQUIRED_NODE_FIELDS`] are in every
/// record; `admin_addr` may be missing (a record written before nodes published it) and is
/// empty when the node has no admin address.
pub(crate) const NODE_FIELDS: [&str; 8] = [
    "addr",
    "server_name",
    "region",
    "state",
    "allocations",
    "connections",
    "cpu_pct",
    "admin_addr",
];

/// How many of [`NODE_FIELDS`] every node record has.
const REQUIRED_NODE_FIELDS: usize = 7;

impl NodeInfo {
    /// Orders nodes least loaded first: allocations, connections, CPU in whole percent, then
    /// id (so the order is total and every node agrees on it). Reservations are placed and
    /// drained allocations handed over in this order.
    pub fn cmp_load(&self, other: &NodeInfo) -> std::cmp::Ordering {
        let cpu = |n: &NodeInfo| n.cpu_pct.floor();
        self.allocations
            .cmp(&other.allocations)
            .then(self.connections.cmp(&other.connections))
            .then(cpu(self).total_cmp(&cpu(other)))
            .then_with(|| self.id.cmp(&other.id))
    }

    /// Checks what the node is about to publish, so that nothing it writes fails to parse.
    pub fn validate(&self) -> Result<(), String> {
        check_name(self.server_name.as_bytes(), MAX_SERVER_NAME_LEN, |b| {
            b.is_ascii_graphic()
        })
        .map_err(|e| format!("server name: {e}"))?;
        check_region(&self.region).map_err(|e| format!("region: {e}"))?;
        if let Some(admin) = &self.admin_addr {
            check_admin_addr(admin).map_err(|e| format!("admin address: {e}"))?;
        }
        if !self.cpu_pct.is_finite() || self.cpu_pct < 0.0 {
            return Err(format!(
                "cpu_pct {} is not a finite non-negative number",
                self.cpu_pct
            ));
        }
        Ok(())
    }

    /// The record's hash fields and values, in [`NODE_FIELDS`] order.
    pub(crate) fn fields(&self) -> [(&'static str, String); 8] {
        [
            (NODE_FIELDS[0], self.addr.to_string()),
            (NODE_FIELDS[1], self.server_name.clone()),
            (NODE_FIELDS[2], self.region.clone()),
            (NODE_FIELDS[3], self.state.as_str().to_owned()),
            (NODE_FIELDS[4], self.allocations.to_string()),
            (NODE_FIELDS[5], self.connections.to_string()),
            (NODE_FIELDS[6], self.cpu_pct.to_string()),
            (NODE_FIELDS[7], self.admin_addr.clone().unwrap_or_default()),
        ]
    }

    /// Parses a node record from its hash values in [`NODE_FIELDS`] order. `Ok(None)` when no
    /// field exists (the record expired); an error names what is wrong otherwise. A missing or
    /// empty `admin_addr` is `None`.
    pub(crate) fn from_fields(
        id: NodeId,
        values: &[Option<Vec<u8>>],
    ) -> Result<Option<NodeInfo>, String> {
        if values.len() != NODE_FIELDS.len() {
            return Err(format!(
                "{} fields, not {}",
                values.len(),
                NODE_FIELDS.len()
            ));
        }
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut text = Vec::with_capacity(NODE_FIELDS.len());
        for (name, value) in NODE_FIELDS.iter().zip(values).take(REQUIRED_NODE_FIELDS) {
            let value = value
                .as_deref()
                .ok_or_else(|| format!("field {name} is missing"))?;
            text.push(bounded_str(value).map_err(|e| format!("field {name}: {e}"))?);
        }
        let field = |i: usize| text[i];
        let addr: SocketAddr = field(0)
            .parse()
            .map_err(|_| format!("addr {:?} is not a socket address", field(0)))?;
        let state = NodeState::parse(field(3).as_bytes())
            .ok_or_else(|| format!("state {:?} is neither active nor draining", field(3)))?;
        let allocations = parse_decimal(field(4)).ok_or("allocations is not a decimal u64")?;
        let connections = parse_decimal(field(5)).ok_or("connections is not a decimal u64")?;
        let cpu_pct = parse_cpu(field(6)).ok_or("cpu_pct is not a finite non-negative number")?;
        let admin_addr = match values[REQUIRED_NODE_FIELDS].as_deref() {
            None | Some(b"") => None,
            Some(raw) => Some(
                bounded_str(raw)
                    .map_err(|e| format!("field admin_addr: {e}"))?
                    .to_owned(),
            ),
        };
        let info = NodeInfo {
            id,
            addr,
            server_name: field(1).to_owned(),
            region: field(2).to_owned(),
            state,
            allocations,
            connections,
            cpu_pct,
            admin_addr,
        };
        info.validate()?;
        Ok(Some(info))
    }
}

/// `raw` as text, if it is at most [`MAX_VALUE_LEN`] bytes of UTF-8.
fn bounded_str(raw: &[u8]) -> Result<&str, String> {
    if raw.len() > MAX_VALUE_LEN {
        return Err(format!(
            "{} bytes, over the {MAX_VALUE_LEN}-byte limit",
            raw.len()
        ));
    }
    std::str::from_utf8(raw).map_err(|_| "not UTF-8".to_owned())
}

/// A decimal `u64` with digits only (no sign, no spaces, no leading zeros but `0` itself).
fn parse_decimal(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// A CPU percentage as `f32`'s `Display` writes it: digits and at most one dot.
fn parse_cpu(s: &str) -> Option<f32> {
    let shape = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().filter(|&b| b == b'.').count() <= 1
        && !s.starts_with('.')
        && !s.ends_with('.');
    let v: f32 = if shape { s.parse().ok()? } else { return None };
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// An allocation id's stored form: 16 lower-case hex digits, as the relay prints
/// `AllocationId`.
pub(crate) fn allocation_hex(allocation: u64) -> String {
    format!("{allocation:016x}")
}

/// Parses exactly 16 lower-case hex digits.
fn parse_allocation_hex(s: &[u8]) -> Option<u64> {
    let ok = s.len() == 16 && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !ok {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// Who holds a join code: the node that claimed it, and the allocation once it is bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeRecord {
    /// The node that won the code.
    pub node: NodeId,
    /// The allocation the code opens, once bound (`None` between claim and bind).
    pub allocation: Option<u64>,
}

impl CodeRecord {
    /// The stored form: `{node}` or `{node} {allocation as 16 hex digits}`.
    pub(crate) fn to_value(&self) -> String {
        match self.allocation {
            None => self.node.to_string(),
            Some(a) => format!("{} {}", self.node, allocation_hex(a)),
        }
    }

    /// Parses the stored form strictly.
    pub(crate) fn parse(raw: &[u8]) -> Result<CodeRecord, String> {
        if raw.len() > MAX_VALUE_LEN {
            return Err(format!(
                "{} bytes, over the {MAX_VALUE_LEN}-byte limit",
                raw.len()
            ));
        }
        let mut parts = raw.splitn(2, |&b| b == b' ');
        let node = parts.next().unwrap_or_default();
        let node = NodeId::from_bytes(node).map_err(|e| format!("node id: {e}"))?;
        let allocation = match parts.next() {
            None => None,
            Some(hex) => Some(
                parse_allocation_hex(hex).ok_or("allocation is not 16 lower-case hex digits")?,
            ),
        };
        Ok(CodeRecord { node, allocation })
    }
}

/// Parses an allocation record's value: the holding node's id.
pub(crate) fn parse_node_value(raw: &[u8]) -> Result<NodeId, String> {
    if raw.len() > MAX_VALUE_LEN {
        return Err(format!(
            "{} bytes, over the {MAX_VALUE_LEN}-byte limit",
            raw.len()
        ));
    }
    NodeId::from_bytes(raw).map_err(|e| format!("node id: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInfo {
        NodeInfo {
            id: NodeId::parse("relay-1.eu_west").unwrap(),
            addr: "[2001:db8::1]:4433".parse().unwrap(),
            server_name: "relay-1.example.net".into(),
            region: "eu-west".into(),
            state: NodeState::Draining,
            allocations: 12,
            connections: 0,
            cpu_pct: 37.5,
            admin_addr: Some("relay-1.internal:7701".into()),
        }
    }

    fn values(info: &NodeInfo) -> Vec<Option<Vec<u8>>> {
        info.fields()
            .into_iter()
            .map(|(_, v)| Some(v.into_bytes()))
            .collect()
    }

    #[test]
    fn node_ids() {
        for ok in ["a", "relay-1", "A.b_c-9", &"x".repeat(64)] {
            assert_eq!(NodeId::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(
            NodeId::parse(""),
            Err(NameError::Length { len: 0, max: 64 })
        );
        assert_eq!(
            NodeId::parse(&"x".repeat(65)),
            Err(NameError::Length { len: 65, max: 64 })
        );
        for (bad, byte) in [
            ("a b", b' '),
            ("a:b", b':'),
            ("né", 0xc3),
            ("a\n", b'\n'),
            ("{a}", b'{'),
        ] {
            assert_eq!(NodeId::parse(bad), Err(NameError::Byte(byte)), "{bad:?}");
        }
    }

    #[test]
    fn codes() {
        assert!(check_code("BCDF78").is_ok());
        assert!(check_code(&"A".repeat(32)).is_ok());
        assert!(check_code("").is_err());
        assert!(check_code(&"A".repeat(33)).is_err());
        assert!(check_code("AB CD").is_err());
        assert!(check_code("AB*").is_err());
    }

    #[test]
    fn node_record_round_trips() {
        let info = node();
        let back = NodeInfo::from_fields(info.id.clone(), &values(&info)).unwrap();
        assert_eq!(back, Some(info));
    }

    #[test]
    fn node_record_absent_or_partial() {
        let info = node();
        assert_eq!(
            NodeInfo::from_fields(info.id.clone(), &[const { None }; 8]),
            Ok(None)
        );
        let mut v = values(&info);
        v[3] = None;
        assert_eq!(
            NodeInfo::from_fields(info.id.clone(), &v).unwrap_err(),
            "field state is missing"
        );
        assert!(NodeInfo::from_fields(info.id.clone(), &v[..6]).is_err());
        assert!(NodeInfo::from_fields(info.id.clone(), &v[..7]).is_err());
    }

    #[test]
    fn a_record_without_an_admin_address_is_read_as_none() {
        let info = node();
        // Written before nodes published their admin address: the field does not exist.
        let mut v = values(&info);
        v[7] = None;
        let old = NodeInfo::from_fields(info.id.clone(), &v).unwrap().unwrap();
        assert_eq!(old.admin_addr, None);
        assert_eq!(old.addr, info.addr);
        // Written by a node without an admin server: the field is empty.
        let none = NodeInfo {
            admin_addr: None,
            ..info.clone()
        };
        assert_eq!(none.fields()[7], ("admin_addr", String::new()));
        assert_eq!(
            NodeInfo::from_fields(info.id.clone(), &values(&none)),
            Ok(Some(none))
        );
        for bad in [
            &b"relay-1"[..],
            b"relay-1:0",
            b"::1:7701",
            b"a b:1",
            b"host:99999",
        ] {
            v[7] = Some(bad.to_vec());
            assert!(
                NodeInfo::from_fields(info.id.clone(), &v).is_err(),
                "admin_addr {:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn admin_addresses() {
        for ok in [
            "10.0.0.1:7701",
            "[2001:db8::1]:7701",
            "relay-1:7701",
            "relay-1.baton.svc.cluster.local:1",
            "localhost:65535",
        ] {
            assert_eq!(check_admin_addr(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "relay-1",
            "relay-1:",
            "relay-1:0",
            "relay-1:65536",
            "relay-1:+80",
            "relay-1:080",
            "2001:db8::1:7701",
            "[relay-1]:7701",
            "10.0.0.1:0",
            "a b:7701",
            "http://relay-1:7701",
            "relay-1:7701/x",
            ":7701",
        ] {
            assert!(check_admin_addr(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}:7701", "a".repeat(MAX_ADMIN_ADDR_LEN));
        assert!(check_admin_addr(&long).is_err());
    }

    #[test]
    fn node_record_rejects_bad_values() {
        let info = node();
        let cases: [(usize, &[u8]); 14] = [
            (0, b"not an address"),
            (0, b"1.2.3.4"),
            (1, b"has space"),
            (1, b""),
            (2, b"eu/west"),
            (3, b"Active"),
            (3, b"gone"),
            (4, b"+5"),
            (4, b" 5"),
            (4, b"05"),
            (4, b"18446744073709551616"),
            (5, b"-1"),
            (6, b"NaN"),
            (6, b"inf"),
        ];
        for (i, bad) in cases {
            let mut v = values(&info);
            v[i] = Some(bad.to_vec());
            assert!(
                NodeInfo::from_fields(info.id.clone(), &v).is_err(),
                "field {} = {:?} accepted",
                NODE_FIELDS[i],
                String::from_utf8_lossy(bad)
            );
        }
        let mut v = values(&info);
        v[1] = Some(vec![b'a'; MAX_VALUE_LEN + 1]);
        assert!(NodeInfo::from_fields(info.id.clone(), &v)
            .unwrap_err()
            .contains("over the 256-byte limit"));
        v[1] = Some(vec![0xff, 0xfe]);
        assert!(NodeInfo::from_fields(info.id.clone(), &v).is_err());
    }

    #[test]
    fn validate_refuses_what_would_not_parse() {
        let mut info = node();
        info.cpu_pct = f32::NAN;
        assert!(info.validate().is_err());
        info.cpu_pct = -1.0;
        assert!(info.validate().is_err());
        info = node();
        info.region = String::new();
        assert!(info.validate().is_err());
        info = node();
        info.server_name = "a b".into();
        assert!(info.validate().is_err());
        info = node();
        info.admin_addr = Some("no-port".into());
        assert!(info.validate().is_err());
    }

    #[test]
    fn cpu_values() {
        assert_eq!(parse_cpu("0"), Some(0.0));
        assert_eq!(parse_cpu("37.5"), Some(37.5));
        assert_eq!(parse_cpu("350"), Some(350.0));
        for bad in ["", ".5", "5.", "1.2.3", "-0", "1e3", "1_0"] {
            assert_eq!(parse_cpu(bad), None, "{bad:?}");
        }
        for v in [0.0f32, 0.1, 99.99, 1234.5678] {
            assert_eq!(parse_cpu(&v.to_string()), Some(v));
        }
    }

    #[test]
    fn code_records() {
        let node = NodeId::parse("relay-1").unwrap();
        let claimed = CodeRecord {
            node: node.clone(),
            allocation: None,
        };
        assert_eq!(claimed.to_value(), "relay-1");
        assert_eq!(CodeRecord::parse(b"relay-1"), Ok(claimed));
        let bound = CodeRecord {
            node,
            allocation: Some(0x00ab_cdef_0123_4567),
        };
        assert_eq!(bound.to_value(), "relay-1 00abcdef01234567");
        assert_eq!(CodeRecord::parse(b"relay-1 00abcdef01234567"), Ok(bound));
        for bad in [
            &b""[..],
            b"relay-1 ",
            b"relay-1 abcdef01234567",
            b"relay-1 00ABCDEF01234567",
            b"relay-1 00abcdef012345678",
            b"relay-1  00abcdef01234567",
            b"relay-1 00abcdef0123456g",
            b"relay 1 00abcdef01234567",
            b" relay-1",
        ] {
            assert!(
                CodeRecord::parse(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(CodeRecord::parse(&[b'a'; MAX_VALUE_LEN + 1]).is_err());
    }

    #[test]
    fn allocation_values() {
        assert_eq!(allocation_hex(1), "0000000000000001");
        assert_eq!(allocation_hex(u64::MAX), "ffffffffffffffff");
        assert_eq!(parse_node_value(b"relay-2").unwrap().as_str(), "relay-2");
        assert!(parse_node_value(b"relay 2").is_err());
        assert!(parse_node_value(b"").is_err());
    }
}
