//! Bridge networking for capsules: IPAM, bridges and veths through netlink, outbound NAT,
//! published ports and the forward/loopback policy in Bolt's own nftables table. See
//! `docs/networking.md`.
//!
//! - [`ipam`]: pure subnet arithmetic and address allocation (the taken addresses come from the
//!   agent's events);
//! - [`ports`]: `-p [IP:]HOST:CONTAINER[/tcp|udp]` specs;
//! - [`nat`]: the pure model of `table ip bolt` and its nft script;
//! - [`filter`]: the filter chains of that table: the host's loopback guarded from bridges,
//!   networks isolated from each other, unpublished ports not forwarded to;
//! - [`netns`]: network namespaces as descriptors, running code inside one;
//! - [`link`]: bridges, veth pairs, addresses and routes through `rtnetlink`;
//! - [`nft`]: runs `nft -f -` in a namespace;
//! - [`sysctl`]: `ip_forward`, `route_localnet`;
//! - [`host`]: [`Host`], which ties them together with rollback on failure.
//!
//! Everything that touches the kernel takes the namespace it works in, so tests run it all in
//! namespaces of their own.

pub mod filter;
pub mod host;
pub mod ipam;
pub mod link;
pub mod nat;
pub mod netns;
pub mod nft;
pub mod ports;
pub mod sysctl;

pub use host::{
    bridge_name, veth_name, Attachment, BridgeNetwork, Host, HostError, CAPSULE_IFNAME,
    DEFAULT_BRIDGE, DEFAULT_MTU,
};
pub use ipam::{IpamError, Pool, Subnet};
pub use nat::NatTable;
pub use netns::{Netns, NetnsError};
pub use ports::{PortSpec, PortSpecError, Proto};
