//! The pure model of Bolt's nftables table (`table ip bolt`): the bridge networks that get
//! outbound NAT and the published ports that get DNAT, rendered as one nft script that replaces
//! the whole table in a single transaction.
//!
//! Layout (one table; the NAT chains here, the filter chains of [`super::filter`] beside them):
//!
//! ```text
//! table ip bolt {
//!     chain prerouting  { type nat hook prerouting priority -100;
//!                         ip daddr 127.0.0.0/8 return; fib daddr type local jump published }
//!     chain output      { type nat hook output priority -100;     fib daddr type local jump published }
//!     chain published   { [ip daddr HOST_IP] tcp|udp dport HOST_PORT dnat to CAPSULE_IP:PORT ... }
//!     chain postrouting { type nat hook postrouting priority 100;
//!         ip saddr SUBNET oifname != BRIDGE masquerade                # outbound NAT
//!         oifname BRIDGE ip saddr 127.0.0.0/8 masquerade              # 127.0.0.1 -> capsule
//!         oifname BRIDGE ip saddr SUBNET ct status dnat masquerade    # hairpin
//!     }
//! }
//! ```
//!
//! `prerouting` catches traffic from other machines and from capsules (hairpin: a capsule
//! reaching a published port through a host address); `output` catches the host's own
//! connections, 127.0.0.1 included (the kernel routes such a packet out of the bridge only with
//! `route_localnet=1` on it, and the masquerade gives it the bridge's address as its source).
//! `prerouting` never DNATs a packet for 127.0.0.0/8: such a packet comes from another machine
//! or a capsule (the host's own are NATed in `output`), and a port published on 127.0.0.1 is
//! the host's alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::filter;
use super::ipam::Subnet;
use super::ports::PortSpec;

/// The family of Bolt's table.
pub const TABLE_FAMILY: &str = "ip";
/// The name of Bolt's table.
pub const TABLE_NAME: &str = "bolt";

/// Why the model refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    /// The host port is already published (by this or another capsule).
    #[error("host port {spec} is already published by capsule {holder}")]
    PortConflict {
        /// The spec asked for.
        spec: PortSpec,
        /// The capsule that holds it.
        holder: String,
    },
    /// Two specs of one request claim the same host port.
    #[error("port specs {first} and {second} claim the same host port")]
    SelfConflict {
        /// The first spec.
        first: PortSpec,
        /// The second spec.
        second: PortSpec,
    },
    /// The bridge has no network in the table.
    #[error("no network on bridge {0}")]
    UnknownBridge(String),
    /// The name cannot appear in a rule.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// The capsule already has published ports.
    #[error("capsule {0} already has published ports")]
    AlreadyPublished(String),
}

/// One published port of one capsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The bridge the capsule is on.
    pub bridge: String,
    /// The capsule's address on it.
    pub capsule_ip: Ipv4Addr,
    /// The port.
    pub spec: PortSpec,
}

/// What `table ip bolt` should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatTable {
    networks: BTreeMap<String, Subnet>,
    published: BTreeMap<String, Vec<Publication>>,
    drop_other_forwarding: bool,
}

/// Interface names that may appear in a rule: what Linux accepts, minus anything nft would read
/// as syntax.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl NatTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the outbound NAT of the network on `bridge`.
    pub fn add_network(&mut self, bridge: &str, subnet: Subnet) -> Result<(), NatError> {
        if !valid_ifname(bridge) {
            return Err(NatError::InvalidName(bridge.to_string()));
        }
        self.networks.insert(bridge.to_string(), subnet);
        Ok(())
    }

    /// Drops the network on `bridge` and every port published on it. Returns whether it was
    /// there.
    pub fn remove_network(&mut self, bridge: &str) -> bool {
        self.published.retain(|_, pubs| {
            pubs.retain(|p| p.bridge != bridge);
            !pubs.is_empty()
        });
        self.networks.remove(bridge).is_some()
    }

    /// The networks, bridge name to subnet.
    pub fn networks(&self) -> &BTreeMap<String, Subnet> {
        &self.networks
    }

    /// The published ports, capsule id to its ports.
    pub fn published(&self) -> &BTreeMap<String, Vec<Publication>> {
        &self.published
    }

    /// Whether the `forward` hook drops traffic that involves no Bolt bridge (see
    /// [`super::filter`]).
    pub fn drop_other_forwarding(&self) -> bool {
        self.drop_other_forwarding
    }

    /// Sets the `forward` hook's policy for traffic that involves no Bolt bridge: `drop` when the
    /// agent turned `ip_forward` on itself, `accept` (the default) otherwise.
    pub fn set_drop_other_forwarding(&mut self, drop: bool) {
        self.drop_other_forwarding = drop;
    }

    /// Checks that `specs` conflict neither with each other nor with a port already published.
    pub fn check(&self, specs: &[PortSpec]) -> Result<(), NatError> {
        for (i, a) in specs.iter().enumerate() {
            if let Some(b) = specs[i + 1..].iter().find(|b| a.conflicts(b)) {
                return Err(NatError::SelfConflict {
                    first: *a,
                    second: *b,
                });
            }
            for (holder, pubs) in &self.published {
                if pubs.iter().any(|p| p.spec.conflicts(a)) {
                    return Err(NatError::PortConflict {
                        spec: *a,
                        holder: holder.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Publishes `specs` of `capsule` (at `capsule_ip` on `bridge`) after [`NatTable::check`].
    /// A capsule publishes all its ports at once.
    pub fn publish(
        &mut self,
        capsule: &str,
        bridge: &str,
        capsule_ip: Ipv4Addr,
        specs: &[PortSpec],
    ) -> Result<(), NatError> {
        if !self.networks.contains_key(bridge) {
            return Err(NatError::UnknownBridge(bridge.to_string()));
        }
        if self.published.contains_key(capsule) {
            return Err(NatError::AlreadyPublished(capsule.to_string()));
        }
        self.check(specs)?;
        if specs.is_empty() {
            return Ok(());
        }
        self.published.insert(
            capsule.to_string(),
            specs
                .iter()
                .map(|spec| Publication {
                    bridge: bridge.to_string(),
                    capsule_ip,
                    spec: *spec,
                })
                .collect(),
        );
        Ok(())
    }

    /// Drops the ports of `capsule`, returning them.
    pub fn unpublish(&mut self, capsule: &str) -> Vec<Publication> {
        self.published.remove(capsule).unwrap_or_default()
    }

    /// The nft script that replaces the whole table with this model, atomically (`nft -f` runs
    /// a file as one transaction): declare the table (a no-op when it exists), delete it, and
    /// create it again with its chains.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let t = format!("{TABLE_FAMILY} {TABLE_NAME}");
        // Writing to a String cannot fail.
        let _ = writeln!(s, "table {t} {{}}\ndelete table {t}\ntable {t} {{");
        for (chain, hook, first) in [
            (
                "prerouting",
                "prerouting",
                "\t\tip daddr 127.0.0.0/8 return\n",
            ),
            ("output", "output", ""),
        ] {
            let _ = writeln!(
                s,
                "\tchain {chain} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n{first}\t\tfib daddr type local jump published\n\t}}"
            );
        }
        s.push_str("\tchain published {\n");
        for (capsule, pubs) in &self.published {
            for p in pubs {
                let _ = writeln!(s, "\t\t{}", rule(capsule, p));
            }
        }
        s.push_str("\t}\n");
        s.push_str(
            "\tchain postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n",
        );
        for (bridge, subnet) in &self.networks {
            for r in network_rules(bridge, *subnet) {
                let _ = writeln!(s, "\t\t{r}");
            }
        }
        s.push_str("\t}\n");
        s.push_str(&filter::render(
            self.networks.keys().map(String::as_str),
            self.drop_other_forwarding,
        ));
        s.push_str("}\n");
        s
    }

    /// The nft script that appends the DNAT rules of `capsule` to the `published` chain of a
    /// table made by [`NatTable::render`]: the fast path of publishing (adding rules does not
    /// wait for the kernel to retire old ones, as replacing the table does). Empty when the
    /// capsule publishes nothing.
    pub fn render_add(&self, capsule: &str) -> String {
        let mut s = String::new();
        for p in self.published.get(capsule).into_iter().flatten() {
            let _ = writeln!(
                s,
                "add rule {TABLE_FAMILY} {TABLE_NAME} published {}",
                rule(capsule, p)
            );
        }
        s
    }

    /// The nft script that appends the NAT rules of the network on `bridge` to the
    /// `postrouting` chain of a table made by [`NatTable::render`], and adds the bridge to the
    /// filter policy ([`filter::render_add_network`]). Empty for an unknown bridge.
    pub fn render_add_network(&self, bridge: &str) -> String {
        let mut s = String::new();
        if let Some(subnet) = self.networks.get(bridge) {
            for r in network_rules(bridge, *subnet) {
                let _ = writeln!(s, "add rule {TABLE_FAMILY} {TABLE_NAME} postrouting {r}");
            }
            s.push_str(&filter::render_add_network(bridge));
        }
        s
    }

    /// The nft script that removes the table (a no-op when it does not exist).
    pub fn render_delete() -> String {
        format!(
            "table {TABLE_FAMILY} {TABLE_NAME} {{}}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"
        )
    }
}

/// The NAT rules of one network: outbound masquerade, 127.0.0.1 to a capsule, hairpin.
fn network_rules(bridge: &str, subnet: Subnet) -> [String; 3] {
    [
        format!("ip saddr {subnet} oifname != \"{bridge}\" masquerade"),
        format!("oifname \"{bridge}\" ip saddr 127.0.0.0/8 masquerade"),
        format!("oifname \"{bridge}\" ip saddr {subnet} ct status dnat masquerade"),
    ]
}

/// The DNAT rule of one published port, commented with the capsule's id.
fn rule(capsule: &str, p: &Publication) -> String {
    let daddr = p
        .spec
        .host_ip
        .map(|ip| format!("ip daddr {ip} "))
        .unwrap_or_default();
    format!(
        "{daddr}{proto} dport {hp} dnat to {ip}:{cp} comment \"{c}\"",
        proto = p.spec.proto,
        hp = p.spec.host_port,
        ip = p.capsule_ip,
        cp = p.spec.container_port,
        c = comment(capsule),
    )
}

/// A capsule id as an nft comment: only characters that cannot end the string.
fn comment(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(s: &str) -> PortSpec {
        s.parse().unwrap()
    }

    fn table() -> NatTable {
        let mut t = NatTable::new();
        t.add_network("bolt0", "10.88.0.0/16".parse().unwrap())
            .unwrap();
        t
    }

    #[test]
    fn renders_masquerade_hairpin_and_dnat() {
        let mut t = table();
        t.publish(
            "abc123",
            "bolt0",
            "10.88.0.2".parse().unwrap(),
            &[spec("8080:80"), spec("127.0.0.1:5353:53/udp")],
        )
        .unwrap();
        let s = t.render();
        assert!(
            s.starts_with("table ip bolt {}\ndelete table ip bolt\ntable ip bolt {\n"),
            "{s}"
        );
        for line in [
            "type nat hook prerouting priority -100; policy accept;",
            "type nat hook output priority -100; policy accept;",
            "fib daddr type local jump published",
            "priority -100; policy accept;\n\t\tip daddr 127.0.0.0/8 return\n\t\tfib daddr",
            "tcp dport 8080 dnat to 10.88.0.2:80 comment \"abc123\"",
            "ip daddr 127.0.0.1 udp dport 5353 dnat to 10.88.0.2:53 comment \"abc123\"",
            "type nat hook postrouting priority 100; policy accept;",
            "ip saddr 10.88.0.0/16 oifname != \"bolt0\" masquerade",
            "oifname \"bolt0\" ip saddr 127.0.0.0/8 masquerade",
            "oifname \"bolt0\" ip saddr 10.88.0.0/16 ct status dnat masquerade",
            // The filter policy of super::filter, with this table's bridges.
            "elements = { \"bolt0\" }",
            "iifname @bridges ip daddr 127.0.0.0/8 drop",
            "type filter hook forward priority 0; policy accept;",
            "iifname \"bolt0\" oifname \"bolt0\" accept",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
        // The host's own connections (output) keep their DNAT to 127.0.0.1.
        assert!(
            s.contains("priority -100; policy accept;\n\t\tfib daddr type local jump published"),
            "{s}"
        );
        assert!(s.ends_with("\t}\n}\n"), "{s}");
        t.set_drop_other_forwarding(true);
        assert!(t.render().contains("forward priority 0; policy drop;"));
        // Braces balance.
        assert_eq!(s.matches('{').count(), s.matches('}').count());
    }

    #[test]
    fn conflicts_are_refused_and_nothing_changes() {
        let mut t = table();
        let ip = "10.88.0.2".parse().unwrap();
        t.publish("a", "bolt0", ip, &[spec("8080:80")]).unwrap();
        let before = t.clone();
        let e = t
            .publish(
                "b",
                "bolt0",
                "10.88.0.3".parse().unwrap(),
                &[spec("9090:90"), spec("127.0.0.1:8080:80")],
            )
            .unwrap_err();
        assert_eq!(
            e,
            NatError::PortConflict {
                spec: spec("127.0.0.1:8080:80"),
                holder: "a".into()
            }
        );
        assert_eq!(t, before);
        assert!(matches!(
            t.publish("b", "bolt0", ip, &[spec("1:1"), spec("1:2")]),
            Err(NatError::SelfConflict { .. })
        ));
        assert!(matches!(
            t.publish("b", "bolt1", ip, &[spec("2:2")]),
            Err(NatError::UnknownBridge(_))
        ));
        assert!(matches!(
            t.publish("a", "bolt0", ip, &[spec("3:3")]),
            Err(NatError::AlreadyPublished(_))
        ));
        assert_eq!(t, before);
        // Other protocol, other port, other address: fine.
        t.publish("b", "bolt0", ip, &[spec("8080:80/udp"), spec("8081:80")])
            .unwrap();
    }

    #[test]
    fn unpublish_and_remove_network() {
        let mut t = table();
        t.add_network("bolt1", "10.89.0.0/16".parse().unwrap())
            .unwrap();
        t.publish("a", "bolt0", "10.88.0.2".parse().unwrap(), &[spec("1:1")])
            .unwrap();
        t.publish("b", "bolt1", "10.89.0.2".parse().unwrap(), &[spec("2:2")])
            .unwrap();
        assert_eq!(t.unpublish("a").len(), 1);
        assert!(t.unpublish("a").is_empty());
        assert!(t.remove_network("bolt1"));
        assert!(t.published().is_empty());
        let s = t.render();
        assert!(!s.contains("dnat to"), "{s}");
        assert!(!s.contains("bolt1"), "{s}");
        assert!(s.contains("bolt0"));
    }

    #[test]
    fn names_and_comments_cannot_inject() {
        let mut t = NatTable::new();
        for bad in ["", "a\"b", "bolt 0", "x;y", "0123456789abcdef"] {
            assert!(
                t.add_network(bad, "10.0.0.0/8".parse().unwrap()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(comment("ab\"; drop\n"), "abdrop");
    }

    #[test]
    fn render_add_appends_one_capsules_rules() {
        let mut t = table();
        let ip = "10.88.0.2".parse().unwrap();
        t.publish("a", "bolt0", ip, &[spec("1:2"), spec("127.0.0.1:3:4/udp")])
            .unwrap();
        assert_eq!(
            t.render_add("a"),
            "add rule ip bolt published tcp dport 1 dnat to 10.88.0.2:2 comment \"a\"\n\
             add rule ip bolt published ip daddr 127.0.0.1 udp dport 3 dnat to 10.88.0.2:4 comment \"a\"\n"
        );
        assert_eq!(t.render_add("b"), "");
        assert_eq!(
            t.render_add_network("bolt0"),
            "add rule ip bolt postrouting ip saddr 10.88.0.0/16 oifname != \"bolt0\" masquerade\n\
             add rule ip bolt postrouting oifname \"bolt0\" ip saddr 127.0.0.0/8 masquerade\n\
             add rule ip bolt postrouting oifname \"bolt0\" ip saddr 10.88.0.0/16 ct status dnat masquerade\n\
             add element ip bolt bridges { \"bolt0\" }\n\
             insert rule ip bolt from-network iifname \"bolt0\" oifname \"bolt0\" accept\n"
        );
        assert_eq!(t.render_add_network("bolt9"), "");
        // The same rules as in the full table.
        for line in t.render_add("a").lines() {
            let r = line.trim_start_matches("add rule ip bolt published ");
            assert!(t.render().contains(&format!("\t\t{r}\n")), "{r}");
        }
    }

    #[test]
    fn delete_script() {
        assert_eq!(
            NatTable::render_delete(),
            "table ip bolt {}\ndelete table ip bolt\n"
        );
    }
}
