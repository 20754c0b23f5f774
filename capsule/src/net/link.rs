//! Links, addresses and routes through netlink (`rtnetlink`), never by running `ip`.
//!
//! Every call names the namespace it works in. It runs on a fresh thread inside that namespace
//! ([`Netns::run`]) with a current-thread tokio runtime and its own netlink socket, so the
//! socket talks to that namespace's kernel tables, and the caller's threads never switch.
//! Calls are blocking; async callers use `spawn_blocking`.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::netns::{Netns, NetnsError};

/// Why a netlink step failed. Each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The worker's runtime could not start.
    #[error("start the netlink worker: {0}")]
    Runtime(io::Error),
    /// The netlink socket could not be opened.
    #[error("open a netlink socket: {0}")]
    Socket(io::Error),
    /// A netlink request failed.
    #[error("{step}: {source}")]
    Request {
        /// What was being done.
        step: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// A link of that name exists and is not a bridge.
    #[error("link {0} exists and is not a bridge")]
    NotABridge(String),
    /// A link of that name already exists.
    #[error("link {0} already exists")]
    Exists(String),
    /// No link of that name exists.
    #[error("no link named {0}")]
    NotFound(String),
    /// The name is not a valid interface name.
    #[error("invalid interface name {0:?} (1 to 15 characters: letters, digits, '-', '_', '.')")]
    InvalidName(String),
}

/// The kernel's errno in a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn request(step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let step = step.into();
    move |source| LinkError::Request { step, source }
}

fn check_name(name: &str) -> Result<(), LinkError> {
    if super::nat::valid_ifname(name) {
        Ok(())
    } else {
        Err(LinkError::InvalidName(name.to_string()))
    }
}

/// What `list` reports of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Kind (`bridge`, `veth`, ...), when it has one.
    pub kind: Option<String>,
    /// The index of its bridge, when it is a bridge port.
    pub controller: Option<u32>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Whether it is administratively up.
    pub up: bool,
}

fn info_of(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        controller: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Controller(c) => info.controller = Some(*c),
            LinkAttribute::Mtu(m) => info.mtu = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        info.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// Runs `f` with a netlink handle inside `ns`.
fn with_netlink<T, F, Fut>(ns: &Netns, f: F) -> Result<T, LinkError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, LinkError>>,
{
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(LinkError::Runtime)?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
            let task = tokio::spawn(conn);
            let out = f(handle).await;
            task.abort();
            out
        })
    })?
}

async fn get(h: &Handle, name: &str) -> Result<Option<LinkInfo>, LinkError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(m) => Ok(m.as_ref().map(info_of)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(request(format!("look up link {name}"))(e)),
    }
}

async fn must_get(h: &Handle, name: &str) -> Result<LinkInfo, LinkError> {
    get(h, name)
        .await?
        .ok_or_else(|| LinkError::NotFound(name.to_string()))
}

async fn up(h: &Handle, link: &LinkInfo) -> Result<(), LinkError> {
    h.link()
        .set(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .map_err(request(format!("set {} up", link.name)))
}

async fn delete(h: &Handle, name: &str) -> Result<bool, LinkError> {
    let Some(link) = get(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        // Gone in between (its peer's namespace ended, say).
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(request(format!("delete link {name}"))(e)),
    }
}

/// Every link in `ns`.
pub fn list(ns: &Netns) -> Result<Vec<LinkInfo>, LinkError> {
    with_netlink(ns, |h| async move {
        h.link()
            .get()
            .execute()
            .map_ok(|m| info_of(&m))
            .try_collect()
            .await
            .map_err(request("list links"))
    })
}

/// The link named `name` in `ns`, if any.
pub fn find(ns: &Netns, name: &str) -> Result<Option<LinkInfo>, LinkError> {
    check_name(name)?;
    with_netlink(ns, |h| async move { get(&h, name).await })
}

/// Deletes the link named `name` in `ns` (a veth takes its peer with it). Returns whether
/// there was one.
pub fn remove(ns: &Netns, name: &str) -> Result<bool, LinkError> {
    check_name(name)?;
    with_netlink(ns, |h| async move { delete(&h, name).await })
}

/// Deletes each named link that exists; returns the ones it deleted.
pub fn remove_all(ns: &Netns, names: &[String]) -> Result<Vec<String>, LinkError> {
    for n in names {
        check_name(n)?;
    }
    with_netlink(ns, |h| async move {
        let mut gone = Vec::new();
        for n in names {
            if delete(&h, n).await? {
                gone.push(n.clone());
            }
        }
        Ok(gone)
    })
}

/// A bridge and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// The gateway address, set on the bridge.
    pub gateway: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The bridge's MAC address. Set explicitly so it does not follow its ports (a bridge takes
    /// its lowest port's address otherwise, and capsules would see the gateway change).
    pub mac: [u8; 6],
}

/// Creates the bridge unless it exists, then sets its MTU, its address and up. Idempotent.
/// Returns whether it created the bridge. A link of that name that is not a bridge is refused.
pub fn ensure_bridge(ns: &Netns, spec: &BridgeSpec) -> Result<bool, LinkError> {
    check_name(&spec.name)?;
    with_netlink(ns, |h| async move {
        let name = spec.name.as_str();
        let created = match get(&h, name).await? {
            Some(l) if l.kind.as_deref() == Some("bridge") => false,
            Some(_) => return Err(LinkError::NotABridge(name.to_string())),
            None => {
                h.link()
                    .add(
                        LinkMessageBuilder::<LinkBridge>::new(name)
                            .mtu(spec.mtu)
                            .address(spec.mac.to_vec())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(request(format!("create bridge {name}")))?;
                true
            }
        };
        let configure = async {
            let br = must_get(&h, name).await?;
            h.link()
                .set(LinkUnspec::new_with_index(br.index).mtu(spec.mtu).build())
                .execute()
                .await
                .map_err(request(format!("set the MTU of {name} to {}", spec.mtu)))?;
            h.address()
                .add(br.index, IpAddr::V4(spec.gateway), spec.prefix)
                .replace()
                .execute()
                .await
                .map_err(request(format!(
                    "add {}/{} to {name}",
                    spec.gateway, spec.prefix
                )))?;
            up(&h, &br).await
        };
        match configure.await {
            Ok(()) => Ok(created),
            Err(e) => {
                if created {
                    let _ = delete(&h, name).await;
                }
                Err(e)
            }
        }
    })
}

/// A capsule's end of a bridge network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// The host side's name (`bv<short id>`).
    pub host_name: String,
    /// The bridge it joins.
    pub bridge: String,
    /// The interface name inside the capsule (`eth0`).
    pub ifname: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// The capsule's address.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The default route's gateway.
    pub gateway: Ipv4Addr,
    /// The capsule side's MAC address.
    pub mac: [u8; 6],
}

/// Connects the capsule namespace `capsule` to a bridge in `host`:
///
/// 1. in `host`: one request creates the veth pair with the host side on the bridge and the
///    peer, already named `ifname`, inside `capsule` (so no half-made pair is ever visible in
///    the host namespace); then hairpin mode on the bridge port (a capsule can reach its own
///    published port through a host address) and the host side up;
/// 2. in `capsule`: `lo` up, the address on `ifname`, `ifname` up, the default route via the
///    gateway.
///
/// On any failure the pair is deleted again (which removes both ends).
pub fn connect(host: &Netns, capsule: &Netns, spec: &VethSpec) -> Result<(), LinkError> {
    check_name(&spec.host_name)?;
    check_name(&spec.bridge)?;
    check_name(&spec.ifname)?;
    let capsule_fd = capsule.as_fd().as_raw_fd();
    with_netlink(host, |h| async move {
        let br = must_get(&h, &spec.bridge).await?;
        if br.kind.as_deref() != Some("bridge") {
            return Err(LinkError::NotABridge(spec.bridge.clone()));
        }
        if get(&h, &spec.host_name).await?.is_some() {
            return Err(LinkError::Exists(spec.host_name.clone()));
        }
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.ifname.clone())
            .mtu(spec.mtu)
            .address(spec.mac.to_vec())
            .setns_by_fd(capsule_fd)
            .build();
        let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name.clone())
            .mtu(spec.mtu)
            .controller(br.index)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link().add(pair).execute().await.map_err(request(format!(
            "create veth {} (peer {} in the capsule's namespace)",
            spec.host_name, spec.ifname
        )))?;
        let finish = async {
            let veth = must_get(&h, &spec.host_name).await?;
            let hairpin = LinkUnspec::new_with_index(veth.index)
                .set_port_kind(InfoPortKind::Bridge)
                .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    true,
                )]))
                .build();
            h.link()
                .set_port(hairpin)
                .execute()
                .await
                .map_err(request(format!("set hairpin mode on {}", spec.host_name)))?;
            up(&h, &veth).await?;
            configure_inside(capsule, spec)
        };
        match finish.await {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = delete(&h, &spec.host_name).await;
                Err(e)
            }
        }
    })
}

/// Step 2 of [`connect`], inside the capsule's namespace.
fn configure_inside(capsule: &Netns, spec: &VethSpec) -> Result<(), LinkError> {
    with_netlink(capsule, |h| async move {
        let lo = must_get(&h, "lo").await?;
        up(&h, &lo).await?;
        let eth = must_get(&h, &spec.ifname).await?;
        h.address()
            .add(eth.index, IpAddr::V4(spec.ip), spec.prefix)
            .execute()
            .await
            .map_err(request(format!(
                "add {}/{} to {}",
                spec.ip, spec.prefix, spec.ifname
            )))?;
        up(&h, &eth).await?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(spec.gateway)
                    .output_interface(eth.index)
                    .build(),
            )
            .execute()
            .await
            .map_err(request(format!(
                "add the default route via {}",
                spec.gateway
            )))
    })
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddress {
    /// The link's index.
    pub index: u32,
    /// The address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

/// Every IPv4 address in `ns`.
pub fn addresses(ns: &Netns) -> Result<Vec<LinkAddress>, LinkError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    with_netlink(ns, |h| async move {
        let msgs: Vec<_> = h
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(request("list addresses"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                let ip = ip.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })
                })?;
                Some(LinkAddress {
                    index: m.header.index,
                    ip,
                    prefix: m.header.prefix_len,
                })
            })
            .collect())
    })
}
