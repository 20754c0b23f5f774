//! Pure IPv4 address management: subnets, gateways, the next free address, overlap checks.
//!
//! Nothing here keeps state. Which addresses are taken is the caller's knowledge: the agent folds
//! `NetworkEvent::AddressAllocated`/`AddressReleased` into `NetworkInfo::allocations` and passes
//! those addresses in, so an address is handed out at most once per network however often the
//! agent restarts. Allocation picks the lowest free host address, skipping the network address,
//! the gateway and the broadcast address.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The longest prefix a bridge network may have: /30 leaves room for a gateway and one capsule.
pub const MAX_PREFIX: u8 = 30;

/// Why a subnet, gateway or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The text is not `A.B.C.D/LEN`.
    #[error("bad subnet {0:?}: expected A.B.C.D/LEN, such as 10.88.0.0/16")]
    SubnetSyntax(String),
    /// The prefix length is not a number from 0 to 32.
    #[error("bad subnet {0:?}: the prefix length must be a number from 0 to 32")]
    PrefixLength(String),
    /// The prefix is too long to hold a gateway and a capsule.
    #[error("subnet {subnet} is too small: a network needs a prefix of /{MAX_PREFIX} or shorter")]
    TooSmall {
        /// The subnet as given.
        subnet: String,
    },
    /// Host bits are set in the network address.
    #[error("bad subnet {given}: host bits are set (did you mean {suggested}?)")]
    HostBitsSet {
        /// The text given.
        given: String,
        /// The same prefix with the host bits cleared.
        suggested: String,
    },
    /// The gateway is not a host address of the subnet.
    #[error("gateway {gateway} is not a host address of {subnet}")]
    GatewayOutside {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The subnet.
        subnet: Subnet,
    },
    /// An address is not a usable host address of the subnet.
    #[error("address {ip} is not a host address of {subnet}")]
    AddressOutside {
        /// The address.
        ip: Ipv4Addr,
        /// The subnet.
        subnet: Subnet,
    },
    /// An address is the network's gateway.
    #[error("address {0} is the gateway of its network")]
    AddressIsGateway(Ipv4Addr),
    /// An address is already allocated.
    #[error("address {0} is already in use")]
    AddressInUse(Ipv4Addr),
    /// Every host address of the subnet is taken.
    #[error("no free address left in {0}")]
    Exhausted(Subnet),
    /// Two networks would share addresses.
    #[error("subnet {subnet} overlaps {other} of network {network}")]
    Overlap {
        /// The subnet asked for.
        subnet: Subnet,
        /// The network it overlaps.
        network: String,
        /// That network's subnet.
        other: Subnet,
    },
}

/// An IPv4 subnet: a network address with its host bits clear and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    /// A subnet from a network address and a prefix length; host bits must be clear.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, IpamError> {
        if prefix > 32 {
            return Err(IpamError::PrefixLength(format!("{network}/{prefix}")));
        }
        let base = u32::from(network);
        let mask = mask(prefix);
        if base & !mask != 0 {
            return Err(IpamError::HostBitsSet {
                given: format!("{network}/{prefix}"),
                suggested: format!("{}/{prefix}", Ipv4Addr::from(base & mask)),
            });
        }
        Ok(Self { base, prefix })
    }

    /// The network address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// The prefix length.
    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// The netmask (`255.255.0.0` for a /16).
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The broadcast address (the last address of the subnet).
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(self.last())
    }

    fn last(self) -> u32 {
        self.base | !mask(self.prefix)
    }

    /// Whether `ip` lies in the subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.base
    }

    /// Whether `ip` is a host address: inside, and neither the network nor the broadcast address
    /// (both are usable on /31 and /32, RFC 3021).
    pub fn is_host(self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        self.contains(ip) && (self.prefix >= 31 || (v != self.base && v != self.last()))
    }

    /// The first host address: the conventional gateway.
    pub fn first_host(self) -> Ipv4Addr {
        if self.prefix >= 31 {
            Ipv4Addr::from(self.base)
        } else {
            Ipv4Addr::from(self.base + 1)
        }
    }

    /// The number of host addresses.
    pub fn host_count(self) -> u64 {
        let size = 1u64 << (32 - u32::from(self.prefix));
        if self.prefix >= 31 {
            size
        } else {
            size - 2
        }
    }

    /// Whether the two subnets share at least one address.
    pub fn overlaps(self, other: Subnet) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = IpamError;

    /// Parses `A.B.C.D/LEN`; host bits must be clear.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| IpamError::SubnetSyntax(s.to_string()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| IpamError::SubnetSyntax(s.to_string()))?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 2 {
            return Err(IpamError::PrefixLength(s.to_string()));
        }
        let len: u8 = len
            .parse()
            .map_err(|_| IpamError::PrefixLength(s.to_string()))?;
        if len > 32 {
            return Err(IpamError::PrefixLength(s.to_string()));
        }
        Subnet::new(addr, len).map_err(|e| match e {
            IpamError::HostBitsSet { suggested, .. } => IpamError::HostBitsSet {
                given: s.to_string(),
                suggested,
            },
            other => other,
        })
    }
}

/// The addresses of one bridge network: its subnet and its gateway (the bridge's own address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    subnet: Subnet,
    gateway: Ipv4Addr,
}

impl Pool {
    /// A pool for `subnet`, its gateway `gateway` or else the first host address. Refuses
    /// prefixes longer than /30 and a gateway that is not a host address of the subnet.
    pub fn new(subnet: Subnet, gateway: Option<Ipv4Addr>) -> Result<Self, IpamError> {
        if subnet.prefix() > MAX_PREFIX {
            return Err(IpamError::TooSmall {
                subnet: subnet.to_string(),
            });
        }
        let gateway = gateway.unwrap_or_else(|| subnet.first_host());
        if !subnet.is_host(gateway) {
            return Err(IpamError::GatewayOutside { gateway, subnet });
        }
        Ok(Self { subnet, gateway })
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Whether a capsule may hold `ip`: a host address of the subnet other than the gateway.
    pub fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        self.subnet.is_host(ip) && ip != self.gateway
    }

    /// Checks an address asked for by name (`--ip`): assignable and not in use.
    pub fn check(&self, ip: Ipv4Addr, in_use: &BTreeSet<Ipv4Addr>) -> Result<(), IpamError> {
        if ip == self.gateway {
            return Err(IpamError::AddressIsGateway(ip));
        }
        if !self.subnet.is_host(ip) {
            return Err(IpamError::AddressOutside {
                ip,
                subnet: self.subnet,
            });
        }
        if in_use.contains(&ip) {
            return Err(IpamError::AddressInUse(ip));
        }
        Ok(())
    }

    /// The lowest assignable address not in `in_use`. Looks at no more than
    /// `in_use.len() + 2` candidates.
    pub fn next_free(&self, in_use: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        self.next_free_by(|ip| in_use.contains(&ip))
    }

    /// [`Pool::next_free`] with the membership test as a function, for callers whose
    /// allocations live in another map (such as `NetworkInfo::allocations`).
    pub fn next_free_by(&self, in_use: impl Fn(Ipv4Addr) -> bool) -> Result<Ipv4Addr, IpamError> {
        let first = u32::from(self.subnet.first_host());
        let last = self.subnet.last();
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|ip| self.is_assignable(*ip) && !in_use(*ip))
            .ok_or(IpamError::Exhausted(self.subnet))
    }
}

/// Refuses `subnet` when it shares an address with one of `existing` (network name, subnet);
/// a network of the same name is skipped, so re-creating a network with its own subnet passes.
pub fn check_overlap<'a>(
    name: &str,
    subnet: Subnet,
    existing: impl IntoIterator<Item = (&'a str, Subnet)>,
) -> Result<(), IpamError> {
    for (network, other) in existing {
        if network != name && subnet.overlaps(other) {
            return Err(IpamError::Overlap {
                subnet,
                network: network.to_string(),
                other,
            });
        }
    }
    Ok(())
}

/// A stable, locally administered MAC address for an IPv4 address (`02:42:a:b:c:d`, docker's
/// scheme): an address handed to a new capsule keeps its MAC, so stale neighbour entries stay
/// right.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_subnets() {
        let s: Subnet = "10.88.0.0/16".parse().unwrap();
        assert_eq!(s.network(), ip("10.88.0.0"));
        assert_eq!(s.prefix(), 16);
        assert_eq!(s.netmask(), ip("255.255.0.0"));
        assert_eq!(s.broadcast(), ip("10.88.255.255"));
        assert_eq!(s.first_host(), ip("10.88.0.1"));
        assert_eq!(s.host_count(), 65534);
        assert_eq!(s.to_string(), "10.88.0.0/16");
        assert_eq!(
            "0.0.0.0/0".parse::<Subnet>().unwrap().broadcast(),
            Ipv4Addr::BROADCAST
        );
    }

    #[test]
    fn refuses_bad_subnets_with_the_reason() {
        for bad in [
            "",
            "10.88.0.0",
            "10.88.0/16",
            "10.88.0.0/",
            "foo/8",
            "10.0.0.0/16/1",
        ] {
            let e = bad.parse::<Subnet>().unwrap_err();
            assert!(
                matches!(e, IpamError::SubnetSyntax(_) | IpamError::PrefixLength(_)),
                "{bad}: {e}"
            );
        }
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/x",
            "10.0.0.0/+8",
            "10.0.0.0/008",
        ] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(IpamError::PrefixLength(_))),
                "{bad}"
            );
        }
        let e = "10.88.1.0/16".parse::<Subnet>().unwrap_err();
        assert_eq!(
            e,
            IpamError::HostBitsSet {
                given: "10.88.1.0/16".into(),
                suggested: "10.88.0.0/16".into()
            }
        );
        assert!(e.to_string().contains("did you mean 10.88.0.0/16"));
    }

    #[test]
    fn pool_checks_gateway_and_size() {
        let s: Subnet = "10.88.0.0/16".parse().unwrap();
        assert_eq!(Pool::new(s, None).unwrap().gateway(), ip("10.88.0.1"));
        assert_eq!(
            Pool::new(s, Some(ip("10.88.0.254"))).unwrap().gateway(),
            ip("10.88.0.254")
        );
        for gw in ["10.88.0.0", "10.88.255.255", "10.89.0.1"] {
            assert!(matches!(
                Pool::new(s, Some(ip(gw))),
                Err(IpamError::GatewayOutside { .. })
            ));
        }
        for tiny in ["10.0.0.0/31", "10.0.0.1/32"] {
            assert!(matches!(
                Pool::new(tiny.parse().unwrap(), None),
                Err(IpamError::TooSmall { .. })
            ));
        }
    }

    #[test]
    fn next_free_skips_network_gateway_and_broadcast() {
        let pool = Pool::new("10.0.0.0/29".parse().unwrap(), None).unwrap();
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Ok(a) = pool.next_free(&used) {
            used.insert(a);
            got.push(a.to_string());
        }
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(
            pool.next_free(&used),
            Err(IpamError::Exhausted("10.0.0.0/29".parse().unwrap()))
        );
        // A released address is handed out again, lowest first.
        used.remove(&ip("10.0.0.4"));
        assert_eq!(pool.next_free(&used).unwrap(), ip("10.0.0.4"));
    }

    #[test]
    fn gateway_in_the_middle_is_skipped() {
        let pool = Pool::new("10.0.0.0/30".parse().unwrap(), Some(ip("10.0.0.1"))).unwrap();
        assert_eq!(pool.next_free(&BTreeSet::new()).unwrap(), ip("10.0.0.2"));
        let pool = Pool::new("10.0.0.0/30".parse().unwrap(), Some(ip("10.0.0.2"))).unwrap();
        assert_eq!(pool.next_free(&BTreeSet::new()).unwrap(), ip("10.0.0.1"));
        let used = BTreeSet::from([ip("10.0.0.1")]);
        assert!(matches!(
            pool.next_free(&used),
            Err(IpamError::Exhausted(_))
        ));
    }

    #[test]
    fn check_explains_refusals() {
        let pool = Pool::new("10.88.0.0/24".parse().unwrap(), None).unwrap();
        let used = BTreeSet::from([ip("10.88.0.7")]);
        assert_eq!(pool.check(ip("10.88.0.8"), &used), Ok(()));
        assert_eq!(
            pool.check(ip("10.88.0.7"), &used),
            Err(IpamError::AddressInUse(ip("10.88.0.7")))
        );
        assert_eq!(
            pool.check(ip("10.88.0.1"), &used),
            Err(IpamError::AddressIsGateway(ip("10.88.0.1")))
        );
        for outside in ["10.88.0.0", "10.88.0.255", "10.88.1.1"] {
            assert!(matches!(
                pool.check(ip(outside), &used),
                Err(IpamError::AddressOutside { .. })
            ));
        }
    }

    #[test]
    fn overlap_detection() {
        let a: Subnet = "10.88.0.0/16".parse().unwrap();
        let inner: Subnet = "10.88.5.0/24".parse().unwrap();
        let apart: Subnet = "10.89.0.0/16".parse().unwrap();
        assert!(a.overlaps(inner) && inner.overlaps(a));
        assert!(!a.overlaps(apart) && !apart.overlaps(a));
        let existing = [("default", a), ("other", apart)];
        let e = check_overlap("new", inner, existing).unwrap_err();
        assert_eq!(
            e,
            IpamError::Overlap {
                subnet: inner,
                network: "default".into(),
                other: a
            }
        );
        assert_eq!(
            e.to_string(),
            "subnet 10.88.5.0/24 overlaps 10.88.0.0/16 of network default"
        );
        // The same network again is not an overlap with itself.
        assert_eq!(check_overlap("default", a, existing), Ok(()));
        assert_eq!(
            check_overlap("new", "10.90.0.0/16".parse().unwrap(), existing),
            Ok(())
        );
    }

    #[test]
    fn mac_follows_the_address() {
        assert_eq!(mac_for(ip("10.88.0.2")), [2, 0x42, 10, 88, 0, 2]);
    }

    fn subnet_strategy() -> impl Strategy<Value = Subnet> {
        (any::<u32>(), 20u8..=30).prop_map(|(base, prefix)| {
            Subnet::new(Ipv4Addr::from(base & mask(prefix)), prefix).unwrap()
        })
    }

    proptest! {
        /// Allocating, releasing and allocating again in any order never hands out an address
        /// twice, never the gateway, and never one outside the subnet's host range.
        #[test]
        fn allocations_never_collide(
            subnet in subnet_strategy(),
            gw_offset in any::<u32>(),
            ops in proptest::collection::vec((any::<bool>(), any::<usize>()), 1..300),
        ) {
            let hosts = u32::try_from(subnet.host_count()).unwrap();
            let gateway = Ipv4Addr::from(u32::from(subnet.first_host()) + gw_offset % hosts);
            let pool = Pool::new(subnet, Some(gateway)).unwrap();
            let mut used = BTreeSet::new();
            for (alloc, pick) in ops {
                if alloc || used.is_empty() {
                    match pool.next_free(&used) {
                        Ok(a) => {
                            prop_assert!(subnet.is_host(a));
                            prop_assert_ne!(a, gateway);
                            prop_assert_ne!(a, subnet.network());
                            prop_assert_ne!(a, subnet.broadcast());
                            prop_assert!(used.insert(a), "{} handed out twice", a);
                        }
                        Err(IpamError::Exhausted(_)) => {
                            prop_assert_eq!(used.len() as u64, subnet.host_count() - 1);
                        }
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                } else {
                    let victim = *used.iter().nth(pick % used.len()).unwrap();
                    used.remove(&victim);
                }
            }
        }

        /// Overlap is symmetric and agrees with a brute-force membership test on the ends.
        #[test]
        fn overlap_is_symmetric(a in subnet_strategy(), b in subnet_strategy()) {
            prop_assert_eq!(a.overlaps(b), b.overlaps(a));
            let shares = a.contains(b.network()) || b.contains(a.network());
            prop_assert_eq!(a.overlaps(b), shares);
        }

        /// Display and parse are inverses.
        #[test]
        fn subnet_round_trips(s in subnet_strategy()) {
            prop_assert_eq!(s.to_string().parse::<Subnet>().unwrap(), s);
        }
    }
}
