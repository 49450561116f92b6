//! Identifiers shared by relay and clients.

use std::fmt;

/// A member's identity inside one allocation. The host is always [`PeerId::HOST`] (0); peers
/// get small ids in join order. Ids are never reused while their holder could still return,
/// so a game can key player state on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u16);

impl PeerId {
    /// The host of an allocation.
    pub const HOST: PeerId = PeerId(0);

    /// Whether this is the host's id.
    pub fn is_host(self) -> bool {
        self == Self::HOST
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A relay-unique allocation identifier (64 random bits, shown as 16 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub u64);

impl AllocationId {
    /// A fresh random id from `rng`.
    #[cfg(feature = "rand")]
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        AllocationId(rng.gen())
    }
}

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for AllocationId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(AllocationId)
    }
}
