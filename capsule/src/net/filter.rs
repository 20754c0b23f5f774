//! The filter half of Bolt's nftables table: what capsules may reach and what may reach them.
//! Pure rendering; [`super::nat::NatTable::render`] puts it in the same `table ip bolt` as the
//! NAT chains, so the whole policy is replaced in one transaction and goes with the table.
//!
//! ```text
//! set bridges { type ifname; elements = { "bolt0", ... } }       # every Bolt bridge
//! chain guard {                    # before NAT (priority mangle = -150)
//!     type filter hook prerouting priority -150; policy accept;
//!     iifname @bridges ip daddr 127.0.0.0/8 drop                # the host's loopback
//! }
//! chain forward {
//!     type filter hook forward priority 0; policy accept;        # drop: see below
//!     ct state established,related accept
//!     oifname @bridges ct status dnat accept                     # published ports
//!     iifname @bridges jump from-network
//!     oifname @bridges drop                                      # unpublished, from elsewhere
//! }
//! chain from-network {
//!     iifname "bolt0" oifname "bolt0" accept                     # same network (one per network)
//!     oifname != @bridges accept                                 # outbound
//!     drop                                                       # another Bolt network
//! }
//! ```
//!
//! - **Loopback** (the kube-proxy CVE-2020-8558 class): bridges carry `route_localnet=1` (the
//!   DNAT of the host's `127.0.0.1:PORT` to a capsule needs it), which also lets a capsule that
//!   can craft packets reach every service bound to the host's 127.0.0.1. `guard` drops
//!   whatever arrives from a bridge for 127.0.0.0/8 before NAT: nothing legitimate does (the
//!   answers of the host's own connections to a published 127.0.0.1 port still carry the
//!   bridge's address there; they are turned back into 127.0.0.1 by the NAT hook after it).
//!   Such a packet is not DNAT'd either: the NAT `prerouting` chain returns early for
//!   127.0.0.0/8, so a port published on 127.0.0.1 is the host's alone.
//! - **Forwarding**: established and related traffic; published ports (DNAT'd by the
//!   `published` chain, from anywhere, other Bolt networks included); traffic within one
//!   network (routed hairpin, and bridged traffic when `br_netfilter` passes it to this hook);
//!   outbound from a network to anything that is not a Bolt bridge. Everything else to or from
//!   a Bolt bridge is dropped: one network cannot reach another, and an unpublished port is not
//!   reachable from a machine that routes the subnet through this host.
//! - The chain's policy is `accept` (traffic that involves no Bolt bridge is left to the host's
//!   own firewall), or `drop` when the agent turned `ip_forward` on itself: the host did not
//!   forward before, and does not start forwarding for anything but Bolt's networks (docker does
//!   the same with the `FORWARD` policy of iptables).

use std::fmt::Write as _;

use super::nat::{TABLE_FAMILY, TABLE_NAME};

/// The set of Bolt's bridges.
pub const BRIDGES_SET: &str = "bridges";
/// The chain that judges traffic coming from a Bolt bridge.
pub const FROM_NETWORK: &str = "from-network";

/// The set, and the chains of the filter policy for the bridges `bridges`, as table body lines.
/// `drop_other` gives the `forward` hook a `drop` policy.
pub fn render<'a>(bridges: impl IntoIterator<Item = &'a str>, drop_other: bool) -> String {
    let bridges: Vec<&str> = bridges.into_iter().collect();
    let mut s = String::new();
    let _ = writeln!(s, "\tset {BRIDGES_SET} {{\n\t\ttype ifname");
    if !bridges.is_empty() {
        let list: Vec<String> = bridges.iter().map(|b| format!("\"{b}\"")).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    s.push_str("\t}\n");
    let _ = writeln!(
        s,
        "\tchain guard {{\n\t\ttype filter hook prerouting priority -150; policy accept;\n\t\tiifname @{BRIDGES_SET} ip daddr 127.0.0.0/8 drop\n\t}}"
    );
    let policy = if drop_other { "drop" } else { "accept" };
    let _ = writeln!(
        s,
        "\tchain forward {{\n\t\ttype filter hook forward priority 0; policy {policy};\n\
         \t\tct state established,related accept\n\
         \t\toifname @{BRIDGES_SET} ct status dnat accept\n\
         \t\tiifname @{BRIDGES_SET} jump {FROM_NETWORK}\n\
         \t\toifname @{BRIDGES_SET} drop\n\t}}"
    );
    let _ = writeln!(s, "\tchain {FROM_NETWORK} {{");
    for b in &bridges {
        let _ = writeln!(s, "\t\t{}", same_network(b));
    }
    let _ = writeln!(s, "\t\toifname != @{BRIDGES_SET} accept\n\t\tdrop\n\t}}");
    s
}

/// The nft commands that add the bridge `bridge` to a table made by [`render`]: into the set,
/// and its same-network rule at the head of [`FROM_NETWORK`] (before its final `drop`).
pub fn render_add_network(bridge: &str) -> String {
    format!(
        "add element {TABLE_FAMILY} {TABLE_NAME} {BRIDGES_SET} {{ \"{bridge}\" }}\n\
         insert rule {TABLE_FAMILY} {TABLE_NAME} {FROM_NETWORK} {}\n",
        same_network(bridge)
    )
}

/// Traffic that enters and leaves by the same bridge.
fn same_network(bridge: &str) -> String {
    format!("iifname \"{bridge}\" oifname \"{bridge}\" accept")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_guard_forward_and_isolation() {
        let s = render(["bolt0", "bolt-0123456789"], false);
        for line in [
            "\tset bridges {\n\t\ttype ifname\n\t\telements = { \"bolt0\", \"bolt-0123456789\" }\n\t}\n",
            "type filter hook prerouting priority -150; policy accept;\n\t\tiifname @bridges ip daddr 127.0.0.0/8 drop\n",
            "type filter hook forward priority 0; policy accept;\n\t\tct state established,related accept\n\t\toifname @bridges ct status dnat accept\n\t\tiifname @bridges jump from-network\n\t\toifname @bridges drop\n",
            "\tchain from-network {\n\t\tiifname \"bolt0\" oifname \"bolt0\" accept\n\t\tiifname \"bolt-0123456789\" oifname \"bolt-0123456789\" accept\n\t\toifname != @bridges accept\n\t\tdrop\n\t}\n",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
        assert_eq!(s.matches('{').count(), s.matches('}').count());
    }

    #[test]
    fn drop_policy_and_empty_set() {
        let s = render([], true);
        assert!(s.contains("policy drop;"), "{s}");
        assert!(!s.contains("elements"), "{s}");
        assert!(s.contains("\tchain from-network {\n\t\toifname != @bridges accept\n"));
    }

    #[test]
    fn adding_a_network_inserts_before_the_drop() {
        assert_eq!(
            render_add_network("bolt-x"),
            "add element ip bolt bridges { \"bolt-x\" }\n\
             insert rule ip bolt from-network iifname \"bolt-x\" oifname \"bolt-x\" accept\n"
        );
    }
}
