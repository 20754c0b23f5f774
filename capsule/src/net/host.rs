//! [`Host`]: bridge networks of one host network namespace, the capsules attached to them and
//! Bolt's nftables table, kept consistent step by step (every failing step undoes the earlier
//! ones, so a refused request leaves nothing half-set).
//!
//! The `Host` holds an in-memory picture (networks, attachments, the NAT model) that the agent
//! rebuilds from its state after a restart with [`Host::add_network`] (idempotent on existing
//! bridges) and [`Host::adopt`], then calls [`Host::cleanup_leftovers`],
//! [`Host::remove_stale_bridges`] and [`Host::sync_rules`].

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use sha2::{Digest, Sha256};

use super::ipam::{check_overlap, mac_for, IpamError, Pool, Subnet};
use super::link::{self, BridgeSpec, LinkError, VethSpec};
use super::nat::{NatError, NatTable};
use super::netns::{Netns, NetnsError};
use super::nft::{self, NftError};
use super::ports::{PortSpec, Proto};
use super::sysctl::{self, SysctlError, IP_FORWARD};

/// Prefix of every bridge Bolt makes.
pub const BRIDGE_PREFIX: &str = "bolt";
/// The bridge of the default network.
pub const DEFAULT_BRIDGE: &str = "bolt0";
/// Prefix of the host side of every capsule veth.
pub const VETH_PREFIX: &str = "bv";
/// How many characters of a capsule id go into its veth name (`bv` + 12 = 14 < IFNAMSIZ).
pub const VETH_ID_CHARS: usize = 12;
/// The interface name inside the capsule.
pub const CAPSULE_IFNAME: &str = "eth0";
/// The MTU when none is asked for.
pub const DEFAULT_MTU: u32 = 1500;

/// Why a network operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A subnet, gateway or address was refused.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The NAT model refused a change (a port already published).
    #[error(transparent)]
    Nat(#[from] NatError),
    /// A netlink step failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// `nft` failed.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// A sysctl could not be read or written.
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    /// Entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The MTU is outside 68..=65535.
    #[error("mtu {0} is outside 68..=65535")]
    Mtu(u32),
    /// The capsule id cannot name a veth.
    #[error("capsule id {0:?} cannot name an interface: use letters, digits, '-' and '_'")]
    CapsuleId(String),
    /// The bridge name is not one of Bolt's.
    #[error("bridge name {0:?} must start with {BRIDGE_PREFIX:?} and be a valid interface name")]
    BridgeName(String),
    /// No network of that name is set up.
    #[error("network {0} is not set up on this host")]
    UnknownNetwork(String),
    /// A network of that name exists with other settings.
    #[error("network {0} already exists with other settings")]
    NetworkExists(String),
    /// Another network uses the bridge name.
    #[error("bridge {bridge} already belongs to network {network}")]
    BridgeTaken {
        /// The bridge.
        bridge: String,
        /// Its network.
        network: String,
    },
    /// Capsules are still attached.
    #[error("network {network} still has {count} capsule(s) attached")]
    NetworkInUse {
        /// The network.
        network: String,
        /// How many.
        count: usize,
    },
    /// A host interface already has an address in the subnet.
    #[error("subnet {subnet} overlaps address {ip}/{prefix} of host interface {iface}")]
    SubnetInUse {
        /// The subnet.
        subnet: Subnet,
        /// The interface.
        iface: String,
        /// Its address.
        ip: Ipv4Addr,
        /// Its prefix.
        prefix: u8,
    },
    /// IP forwarding is off in the host namespace.
    #[error(
        "net.ipv4.ip_forward is 0 on this host: bridge networks need it for outbound NAT and \
         published ports (sysctl -w net.ipv4.ip_forward=1)"
    )]
    IpForwardingOff,
    /// The capsule is already attached to a network.
    #[error("capsule {capsule} is already attached to network {network}")]
    AlreadyAttached {
        /// The capsule.
        capsule: String,
        /// Its network.
        network: String,
    },
    /// Another capsule holds the address.
    #[error("address {ip} on network {network} is held by capsule {holder}")]
    AddressTaken {
        /// The address.
        ip: Ipv4Addr,
        /// The network.
        network: String,
        /// The capsule holding it.
        holder: String,
    },
    /// Something on the host already uses the port.
    #[error("host port {spec} is already in use on this host")]
    PortTaken {
        /// The port.
        spec: PortSpec,
    },
    /// The host address of a port spec is not on this host.
    #[error("cannot publish {spec}: {ip} is not an address of this host")]
    HostAddressMissing {
        /// The port.
        spec: PortSpec,
        /// The address.
        ip: Ipv4Addr,
    },
    /// Checking a host port failed for another reason.
    #[error("check host port {spec}: {source}")]
    Probe {
        /// The port.
        spec: PortSpec,
        /// The error.
        source: io::Error,
    },
}

/// The host side veth name of a capsule: `bv` and the first 12 characters of its id.
pub fn veth_name(capsule: &str) -> Result<String, HostError> {
    let ok = !capsule.is_empty()
        && capsule
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(HostError::CapsuleId(capsule.to_string()));
    }
    Ok(format!(
        "{VETH_PREFIX}{}",
        &capsule[..capsule.len().min(VETH_ID_CHARS)]
    ))
}

/// The bridge of a network: `bolt-` and 10 hex digits of the SHA-256 of its name (stable, and
/// within the 15 characters of an interface name whatever the network is called). The agent
/// may give its default network [`DEFAULT_BRIDGE`] instead.
pub fn bridge_name(network: &str) -> String {
    let digest = Sha256::digest(network.as_bytes());
    let hex = hex::encode(digest);
    format!("{BRIDGE_PREFIX}-{}", &hex[..10])
}

/// A bridge network's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNetwork {
    /// The network's name.
    pub name: String,
    /// Its bridge interface.
    pub bridge: String,
    /// Subnet and gateway.
    pub pool: Pool,
    /// MTU of the bridge and every veth.
    pub mtu: u32,
}

impl BridgeNetwork {
    /// A network `name` on `subnet` (`10.88.0.0/16`), gateway `gateway` (else the first host
    /// address), MTU `mtu` (0: 1500), on the bridge [`bridge_name`]`(name)`.
    pub fn new(
        name: &str,
        subnet: &str,
        gateway: Option<Ipv4Addr>,
        mtu: u32,
    ) -> Result<Self, HostError> {
        let subnet: Subnet = subnet.parse()?;
        let mtu = if mtu == 0 { DEFAULT_MTU } else { mtu };
        if !(68..=65535).contains(&mtu) {
            return Err(HostError::Mtu(mtu));
        }
        Ok(Self {
            name: name.to_string(),
            bridge: bridge_name(name),
            pool: Pool::new(subnet, gateway)?,
            mtu,
        })
    }

    /// The same network on another bridge (must start with `bolt`).
    pub fn with_bridge(mut self, bridge: &str) -> Result<Self, HostError> {
        if !bridge.starts_with(BRIDGE_PREFIX) || !super::nat::valid_ifname(bridge) {
            return Err(HostError::BridgeName(bridge.to_string()));
        }
        self.bridge = bridge.to_string();
        Ok(self)
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.pool.subnet()
    }

    /// The gateway (the bridge's address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.pool.gateway()
    }
}

/// A capsule on a bridge network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The capsule id.
    pub capsule: String,
    /// The network's name.
    pub network: String,
    /// The host side veth.
    pub veth: String,
    /// The capsule's address.
    pub ip: Ipv4Addr,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// The gateway.
    pub gateway: Ipv4Addr,
    /// Its published ports.
    pub ports: Vec<PortSpec>,
}

/// The networks of one host network namespace.
#[derive(Debug)]
pub struct Host {
    ns: Netns,
    networks: BTreeMap<String, BridgeNetwork>,
    attachments: BTreeMap<String, Attachment>,
    nat: NatTable,
}

impl Host {
    /// Networks in namespace `ns` (the host's own, or a test's).
    pub fn new(ns: Netns) -> Self {
        Self {
            ns,
            networks: BTreeMap::new(),
            attachments: BTreeMap::new(),
            nat: NatTable::new(),
        }
    }

    /// Networks in the calling thread's namespace.
    pub fn current() -> Result<Self, HostError> {
        Ok(Self::new(Netns::current()?))
    }

    /// The host namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The networks set up, by name.
    pub fn networks(&self) -> &BTreeMap<String, BridgeNetwork> {
        &self.networks
    }

    /// The attached capsules, by id.
    pub fn attachments(&self) -> &BTreeMap<String, Attachment> {
        &self.attachments
    }

    /// The NAT model `table ip bolt` is built from.
    pub fn nat(&self) -> &NatTable {
        &self.nat
    }

    /// Whether `net.ipv4.ip_forward` is on in the host namespace.
    pub fn ip_forward(&self) -> Result<bool, HostError> {
        Ok(sysctl::read(&self.ns, IP_FORWARD)? == "1")
    }

    /// Sets `net.ipv4.ip_forward`. The library never calls this by itself: the agent decides
    /// (docker turns it on), tests turn it on in their own namespaces.
    pub fn set_ip_forward(&self, on: bool) -> Result<(), HostError> {
        sysctl::write(&self.ns, IP_FORWARD, if on { "1" } else { "0" })?;
        Ok(())
    }

    /// Sets the `forward` hook's policy for traffic that involves no Bolt bridge (see
    /// [`super::filter`]): `drop` when the caller turned `ip_forward` on itself, so the host
    /// forwards nothing but Bolt's networks, as before. Rewrites the table when it exists; the
    /// model only changes when `nft` succeeded.
    pub fn set_drop_other_forwarding(&mut self, drop: bool) -> Result<(), HostError> {
        if self.nat.drop_other_forwarding() == drop {
            return Ok(());
        }
        let mut nat = self.nat.clone();
        nat.set_drop_other_forwarding(drop);
        if !nat.networks().is_empty() {
            nft::apply(&self.ns, &nat)?;
        }
        self.nat = nat;
        Ok(())
    }

    /// Sets up a bridge network: refuses a subnet that overlaps another network or an address
    /// of a host interface, and hosts with forwarding off; creates (or finds) the bridge, sets
    /// its MTU, gateway address, `route_localnet=1`, up; adds its outbound NAT and its place in
    /// the filter policy (isolation, the loopback guard: [`super::filter`]) to Bolt's table.
    /// Adding a network that is already set up with the same settings only re-checks the
    /// bridge (the agent's restart path).
    pub fn add_network(&mut self, net: BridgeNetwork) -> Result<(), HostError> {
        if let Some(existing) = self.networks.get(&net.name) {
            if *existing != net {
                return Err(HostError::NetworkExists(net.name));
            }
        }
        if let Some(other) = self
            .networks
            .values()
            .find(|o| o.bridge == net.bridge && o.name != net.name)
        {
            return Err(HostError::BridgeTaken {
                bridge: net.bridge,
                network: other.name.clone(),
            });
        }
        check_overlap(
            &net.name,
            net.subnet(),
            self.networks
                .values()
                .map(|n| (n.name.as_str(), n.subnet())),
        )?;
        if !self.ip_forward()? {
            return Err(HostError::IpForwardingOff);
        }
        self.check_host_addresses(&net)?;
        let spec = BridgeSpec {
            name: net.bridge.clone(),
            mtu: net.mtu,
            gateway: net.gateway(),
            prefix: net.subnet().prefix(),
            mac: mac_for(net.gateway()),
        };
        let created = link::ensure_bridge(&self.ns, &spec)?;
        let mut nat = self.nat.clone();
        let rest = (|| -> Result<(), HostError> {
            sysctl::write(&self.ns, &sysctl::route_localnet(&net.bridge), "1")?;
            nat.add_network(&net.bridge, net.subnet())?;
            // Appending is the fast path and leaves the rules of an earlier run in place until
            // `sync_rules` (no gap in published ports while the agent restarts); without a
            // table (the first network) the whole table is made.
            if nft::run(&self.ns, &["-f", "-"], &nat.render_add_network(&net.bridge)).is_err() {
                nft::apply(&self.ns, &nat)?;
            }
            Ok(())
        })();
        if let Err(e) = rest {
            if created {
                let _ = link::remove(&self.ns, &net.bridge);
            }
            return Err(e);
        }
        self.nat = nat;
        self.networks.insert(net.name.clone(), net);
        Ok(())
    }

    /// Refuses a subnet that holds an address of a host interface other than its own bridge.
    fn check_host_addresses(&self, net: &BridgeNetwork) -> Result<(), HostError> {
        let links = link::list(&self.ns)?;
        let name_of = |index: u32| {
            links
                .iter()
                .find(|l| l.index == index)
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("#{index}"))
        };
        for a in link::addresses(&self.ns)? {
            let theirs = Subnet::new(Ipv4Addr::from(u32::from(a.ip) & mask(a.prefix)), a.prefix);
            if !theirs.is_ok_and(|s| s.overlaps(net.subnet())) {
                continue;
            }
            let iface = name_of(a.index);
            // Our own bridge, left by an earlier run of the agent, is not a conflict.
            if iface == net.bridge && a.ip == net.gateway() && a.prefix == net.subnet().prefix() {
                continue;
            }
            return Err(HostError::SubnetInUse {
                subnet: net.subnet(),
                iface,
                ip: a.ip,
                prefix: a.prefix,
            });
        }
        Ok(())
    }

    /// Removes a network that no capsule is attached to: its NAT rules, then its bridge
    /// (Bolt's table goes too when it was the last network).
    pub fn remove_network(&mut self, name: &str) -> Result<(), HostError> {
        let net = self
            .networks
            .get(name)
            .ok_or_else(|| HostError::UnknownNetwork(name.to_string()))?;
        let count = self
            .attachments
            .values()
            .filter(|a| a.network == name)
            .count();
        if count > 0 {
            return Err(HostError::NetworkInUse {
                network: name.to_string(),
                count,
            });
        }
        let bridge = net.bridge.clone();
        let mut nat = self.nat.clone();
        nat.remove_network(&bridge);
        if nat.networks().is_empty() {
            nft::delete(&self.ns)?;
        } else {
            nft::apply(&self.ns, &nat)?;
        }
        self.nat = nat;
        self.networks.remove(name);
        link::remove(&self.ns, &bridge)?;
        Ok(())
    }

    /// Checks that `ports` can be published: no port already published by Bolt, and nothing
    /// on the host bound to it (a bind on the host address, inside the host namespace; the
    /// socket is closed again at once).
    pub fn check_ports(&self, ports: &[PortSpec]) -> Result<(), HostError> {
        self.nat.check(ports)?;
        let probes = self
            .ns
            .run(|| ports.iter().map(probe).collect::<Vec<_>>())?;
        probes.into_iter().collect()
    }

    /// Attaches capsule `capsule`, whose network namespace is `capsule_ns` (see
    /// [`Netns::of_pid`], [`Netns::open`]), to network `network` with address `ip` (allocated
    /// by the caller, see [`Pool::next_free`]) and publishes `ports`. In order: checks (address,
    /// ports, host ports free), veth pair and the capsule side's address and route, NAT rules;
    /// a failing step undoes the earlier ones.
    pub fn attach(
        &mut self,
        network: &str,
        capsule: &str,
        ip: Ipv4Addr,
        ports: &[PortSpec],
        capsule_ns: &Netns,
    ) -> Result<&Attachment, HostError> {
        let att = self.plan_attachment(network, capsule, ip, ports)?;
        self.check_ports(ports)?;
        let net = self
            .networks
            .get(network)
            .ok_or_else(|| HostError::UnknownNetwork(network.to_string()))?;
        let spec = VethSpec {
            host_name: att.veth.clone(),
            bridge: net.bridge.clone(),
            ifname: CAPSULE_IFNAME.to_string(),
            mtu: net.mtu,
            ip,
            prefix: net.subnet().prefix(),
            gateway: net.gateway(),
            mac: att.mac,
        };
        let bridge = net.bridge.clone();
        link::connect(&self.ns, capsule_ns, &spec)?;
        if let Err(e) = self.publish(&att, &bridge) {
            let _ = link::remove(&self.ns, &att.veth);
            return Err(e);
        }
        Ok(self.attachments.entry(capsule.to_string()).or_insert(att))
    }

    /// Records a capsule that is already attached (its veth made by an earlier run of the
    /// agent) and its published ports, in the model only: no link, no rule and no host port is
    /// touched (the rules of the earlier run keep forwarding meanwhile). Call
    /// [`Host::sync_rules`] once every network and capsule is back.
    pub fn adopt(
        &mut self,
        network: &str,
        capsule: &str,
        ip: Ipv4Addr,
        ports: &[PortSpec],
    ) -> Result<&Attachment, HostError> {
        let att = self.plan_attachment(network, capsule, ip, ports)?;
        let bridge = self
            .networks
            .get(network)
            .map(|n| n.bridge.clone())
            .ok_or_else(|| HostError::UnknownNetwork(network.to_string()))?;
        if !att.ports.is_empty() {
            self.nat.publish(capsule, &bridge, ip, ports)?;
        }
        Ok(self.attachments.entry(capsule.to_string()).or_insert(att))
    }

    /// The pure checks of an attachment.
    fn plan_attachment(
        &self,
        network: &str,
        capsule: &str,
        ip: Ipv4Addr,
        ports: &[PortSpec],
    ) -> Result<Attachment, HostError> {
        let net = self
            .networks
            .get(network)
            .ok_or_else(|| HostError::UnknownNetwork(network.to_string()))?;
        let veth = veth_name(capsule)?;
        if let Some(a) = self.attachments.get(capsule) {
            return Err(HostError::AlreadyAttached {
                capsule: capsule.to_string(),
                network: a.network.clone(),
            });
        }
        let in_use: BTreeSet<Ipv4Addr> = self
            .attachments
            .values()
            .filter(|a| a.network == network)
            .map(|a| a.ip)
            .collect();
        if let Err(e) = net.pool.check(ip, &in_use) {
            if let IpamError::AddressInUse(_) = e {
                let holder = self
                    .attachments
                    .values()
                    .find(|a| a.network == network && a.ip == ip)
                    .map(|a| a.capsule.clone())
                    .unwrap_or_default();
                return Err(HostError::AddressTaken {
                    ip,
                    network: network.to_string(),
                    holder,
                });
            }
            return Err(e.into());
        }
        // Two ids sharing their first 12 characters would share a veth name.
        if let Some(other) = self.attachments.values().find(|a| a.veth == veth) {
            return Err(HostError::CapsuleId(format!(
                "{capsule} (its veth name {veth} is taken by capsule {})",
                other.capsule
            )));
        }
        self.nat.check(ports)?;
        Ok(Attachment {
            capsule: capsule.to_string(),
            network: network.to_string(),
            veth,
            ip,
            mac: mac_for(ip),
            gateway: net.gateway(),
            ports: ports.to_vec(),
        })
    }

    /// Adds the attachment's ports to the table and applies it; the model only changes when
    /// `nft` succeeded.
    fn publish(&mut self, att: &Attachment, bridge: &str) -> Result<(), HostError> {
        if att.ports.is_empty() {
            return Ok(());
        }
        let mut nat = self.nat.clone();
        nat.publish(&att.capsule, bridge, att.ip, &att.ports)?;
        // Appending rules is the fast path; when it fails (the table is not what the model
        // says, removed behind Bolt's back say) the whole table is replaced instead.
        if nft::run(&self.ns, &["-f", "-"], &nat.render_add(&att.capsule)).is_err() {
            nft::apply(&self.ns, &nat)?;
        }
        self.nat = nat;
        Ok(())
    }

    /// Replaces Bolt's table with the model (the one source of truth), undoing any drift; the
    /// agent may call it after a restart once every network and capsule is back.
    pub fn sync_rules(&self) -> Result<(), HostError> {
        if self.nat.networks().is_empty() {
            nft::delete(&self.ns)?;
        } else {
            nft::apply(&self.ns, &self.nat)?;
        }
        Ok(())
    }

    /// Detaches a capsule: drops its published ports from Bolt's table, then deletes its veth
    /// (a veth whose capsule namespace already ended is gone by itself, which is fine). Returns
    /// what was attached, or `None` for an unknown capsule.
    pub fn detach(&mut self, capsule: &str) -> Result<Option<Attachment>, HostError> {
        let Some(att) = self.attachments.get(capsule).cloned() else {
            return Ok(None);
        };
        if !att.ports.is_empty() {
            let mut nat = self.nat.clone();
            nat.unpublish(capsule);
            nft::apply(&self.ns, &nat)?;
            self.nat = nat;
        }
        self.attachments.remove(capsule);
        link::remove(&self.ns, &att.veth)?;
        Ok(Some(att))
    }

    /// Deletes the veths of capsules that no longer exist: every `bv*` veth whose name is not
    /// that of a capsule in `known` or of an attached capsule. Returns the names deleted.
    pub fn cleanup_leftovers<'a>(
        &self,
        known: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<String>, HostError> {
        let mut keep: BTreeSet<String> =
            self.attachments.values().map(|a| a.veth.clone()).collect();
        for id in known {
            if let Ok(v) = veth_name(id) {
                keep.insert(v);
            }
        }
        let stale: Vec<String> = link::list(&self.ns)?
            .into_iter()
            .filter(|l| {
                l.kind.as_deref() == Some("veth")
                    && l.name.starts_with(VETH_PREFIX)
                    && !keep.contains(&l.name)
            })
            .map(|l| l.name)
            .collect();
        Ok(link::remove_all(&self.ns, &stale)?)
    }

    /// Deletes `bolt*` bridges that belong to no network set up here (networks removed while
    /// the agent was down). Call after adding every known network.
    pub fn remove_stale_bridges(&self) -> Result<Vec<String>, HostError> {
        let keep: BTreeSet<&str> = self.networks.values().map(|n| n.bridge.as_str()).collect();
        let stale: Vec<String> = link::list(&self.ns)?
            .into_iter()
            .filter(|l| {
                l.kind.as_deref() == Some("bridge")
                    && l.name.starts_with(BRIDGE_PREFIX)
                    && !keep.contains(l.name.as_str())
            })
            .map(|l| l.name)
            .collect();
        Ok(link::remove_all(&self.ns, &stale)?)
    }

    /// Removes everything this `Host` set up: Bolt's table, every attached capsule's veth,
    /// every network's bridge. For tests and a full reset; keeps going after a failing step
    /// and returns the first error.
    pub fn teardown(&mut self) -> Result<(), HostError> {
        let mut first: Option<HostError> = None;
        let mut note = |r: Result<(), HostError>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        note(nft::delete(&self.ns).map_err(HostError::from));
        let drop_other = self.nat.drop_other_forwarding();
        self.nat = NatTable::new();
        self.nat.set_drop_other_forwarding(drop_other);
        let veths: Vec<String> = self.attachments.values().map(|a| a.veth.clone()).collect();
        let bridges: Vec<String> = self.networks.values().map(|n| n.bridge.clone()).collect();
        note(
            link::remove_all(&self.ns, &veths)
                .map(drop)
                .map_err(HostError::from),
        );
        note(
            link::remove_all(&self.ns, &bridges)
                .map(drop)
                .map_err(HostError::from),
        );
        self.attachments.clear();
        self.networks.clear();
        first.map_or(Ok(()), Err)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix.min(32) {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

/// Binds the port's host address and port (closing it at once) to see whether it is free.
fn probe(spec: &PortSpec) -> Result<(), HostError> {
    let addr = (spec.bind_ip(), spec.host_port);
    let r = match spec.proto {
        Proto::Tcp => TcpListener::bind(addr).map(drop),
        Proto::Udp => UdpSocket::bind(addr).map(drop),
    };
    r.map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => HostError::PortTaken { spec: *spec },
        io::ErrorKind::AddrNotAvailable => HostError::HostAddressMissing {
            spec: *spec,
            ip: spec.bind_ip(),
        },
        _ => HostError::Probe {
            spec: *spec,
            source,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_ifnamsiz() {
        assert_eq!(veth_name("0123456789abcdef0123").unwrap(), "bv0123456789ab");
        assert_eq!(veth_name("abc").unwrap(), "bvabc");
        for bad in ["", "a b", "a/b", "é"] {
            assert!(
                matches!(veth_name(bad), Err(HostError::CapsuleId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bridge_names_are_stable_and_short() {
        let a = bridge_name("frontend");
        assert_eq!(a, bridge_name("frontend"));
        assert_ne!(a, bridge_name("backend"));
        assert!(a.starts_with("bolt-") && a.len() == 15, "{a}");
        let long = bridge_name(&"x".repeat(200));
        assert!(super::super::nat::valid_ifname(&long));
    }

    #[test]
    fn bridge_network_validation() {
        let n = BridgeNetwork::new("default", "10.88.0.0/16", None, 0).unwrap();
        assert_eq!(n.gateway(), "10.88.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(n.mtu, DEFAULT_MTU);
        assert!(matches!(
            BridgeNetwork::new("x", "10.88.0.0/16", None, 67),
            Err(HostError::Mtu(67))
        ));
        assert!(matches!(
            BridgeNetwork::new("x", "10.88.0.1/16", None, 0),
            Err(HostError::Ipam(IpamError::HostBitsSet { .. }))
        ));
        assert_eq!(n.clone().with_bridge("bolt0").unwrap().bridge, "bolt0");
        for bad in ["br0", "bolt with space", "bolt0123456789abc"] {
            assert!(n.clone().with_bridge(bad).is_err(), "{bad}");
        }
    }
}
