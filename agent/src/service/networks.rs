//! Bridge networks of this node: `bolt network create/ls/rm/inspect`, the default network
//! `bridge` (on the `bolt0` bridge, created on first use), and a capsule's attachment.
//!
//! Every network and every address is an event, decided on the live state
//! ([`Command::CreateNetwork`], [`Command::AllocateAddress`], ...), so an address is never
//! handed out twice, across restarts too. The kernel side (bridges, veths, nft rules) is
//! [`bolt_capsule::net::Host`]: a request is checked by `decide` first, then carried out on the
//! host, and only recorded when the host side succeeded (or undone when the record fails).
//!
//! A capsule on a bridge network gets an unnamed network namespace made by the agent, its veth
//! and address ([`Host::attach`]), and joins it through `/proc/<agent pid>/fd/N` when its
//! supervisor starts it; the capsule's processes then keep the namespace alive, and it ends
//! with them (nothing to clean up after a crash). A restart of the capsule gets a fresh
//! namespace with the same address.
//!
//! **Forwarding.** Bridge networks need `net.ipv4.ip_forward=1`. Like docker, the agent turns
//! it on when it sets up its first bridge network; the value it found is written once to
//! `ROOT/network/ip_forward.before` (and logged), so an operator can put it back. What is
//! forwarded is Bolt's table's filter policy (`bolt_capsule::net::filter`): networks isolated
//! from each other, only published ports reachable from elsewhere; when the agent turned
//! forwarding on itself, forwarding that involves no Bolt network is dropped too.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bolt_capsule::net::{
    ports, Attachment, BridgeNetwork, Host, HostError, Netns, PortSpec, DEFAULT_BRIDGE,
};
use bolt_events::payload::NetworkEvent;
use bolt_events::Payload;
use bolt_state::{decide, CapsuleStatus, Command, DecideError, NetworkInfo, State};

use crate::node::{Node, NodeError};
use crate::wire::capsules::short;
use crate::wire::networks::{CreateNetworkRequest, NetworkView};

/// The default network's name (`--network bridge`, the default of `bolt run` is `none`).
pub const DEFAULT_NETWORK: &str = "bridge";
/// The default network's subnet (overridable with `BOLT_DEFAULT_SUBNET` at agent start).
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// The driver of every network here.
pub const DRIVER: &str = "bridge";

/// One step of a network operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no such network: {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Decide(DecideError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Task(String),
}

impl From<DecideError> for NetworkError {
    fn from(e: DecideError) -> Self {
        match e {
            DecideError::UnknownNetwork(n) => NetworkError::NotFound(n),
            DecideError::NetworkExists(_)
            | DecideError::NetworkInUse { .. }
            | DecideError::SubnetOverlap { .. }
            | DecideError::AddressInUse { .. }
            | DecideError::AddressesExhausted(_) => NetworkError::Conflict(e.to_string()),
            other => NetworkError::Decide(other),
        }
    }
}

/// The view of a network of the state.
pub fn network_view(n: &NetworkInfo) -> NetworkView {
    NetworkView {
        name: n.name.clone(),
        driver: n.driver.clone(),
        subnet: n.subnet.clone(),
        gateway: n.gateway,
        mtu: n.mtu,
        bridge: bridge_of(&n.name),
        capsules: n
            .allocations
            .iter()
            .map(|(ip, c)| (*ip, c.clone()))
            .collect(),
    }
}

/// The bridge interface of network `name`.
pub fn bridge_of(name: &str) -> String {
    if name == DEFAULT_NETWORK {
        DEFAULT_BRIDGE.to_owned()
    } else {
        bolt_capsule::net::bridge_name(name)
    }
}

/// The host-side settings of a network of the state.
pub fn bridge_network(n: &NetworkInfo) -> Result<BridgeNetwork, HostError> {
    let net = BridgeNetwork::new(&n.name, &n.subnet, Some(n.gateway), n.mtu)?;
    if n.name == DEFAULT_NETWORK {
        net.with_bridge(DEFAULT_BRIDGE)
    } else {
        Ok(net)
    }
}

/// A capsule's namespace, attached and holding its address. Dropping it without
/// [`Prepared::keep`] undoes the attachment and releases the address.
#[derive(Debug)]
pub struct Prepared {
    /// The namespace; keep it open until the capsule runs in it.
    pub netns: Netns,
    /// The attachment (address, gateway, ports).
    pub attachment: Attachment,
    /// Whether this call allocated the address (and so releases it on failure).
    allocated: bool,
}

impl Prepared {
    /// The path the supervisor (another process) opens to join the namespace.
    pub fn join_path(&self) -> PathBuf {
        let p = self.netns.proc_path();
        let s = p.to_string_lossy();
        match s.strip_prefix("/proc/self/") {
            Some(rest) => PathBuf::from(format!("/proc/{}/{rest}", std::process::id())),
            None => p,
        }
    }
}

/// The networks of this node. One per agent, shared as `Arc`.
pub struct Networks {
    node: Arc<Node>,
    root: PathBuf,
    host: Mutex<Option<Host>>,
    default_subnet: String,
    /// Serializes decide + host change + append.
    ops: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn plock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Networks {
    /// The networks of the agent root `root`.
    pub fn new(node: Arc<Node>, root: &Path) -> Arc<Networks> {
        Arc::new(Networks {
            node,
            root: root.to_path_buf(),
            host: Mutex::new(None),
            default_subnet: std::env::var("BOLT_DEFAULT_SUBNET")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SUBNET.to_owned()),
            ops: tokio::sync::Mutex::new(()),
        })
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Networks) -> T + Send + 'static,
    ) -> Result<T, NetworkError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| NetworkError::Task(e.to_string()))
    }

    /// Runs `f` on the live state.
    pub async fn state<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&State) -> T + Send + 'static,
    ) -> Result<T, NetworkError> {
        Ok(self
            .blocking(move |me| me.node.with_live_state(f))
            .await??)
    }

    async fn decide(self: &Arc<Self>, cmd: Command) -> Result<Vec<Payload>, NetworkError> {
        Ok(self.state(move |s| decide(s, cmd)).await??)
    }

    async fn append(self: &Arc<Self>, payloads: Vec<Payload>) -> Result<(), NetworkError> {
        self.blocking(move |me| me.node.append(payloads)).await??;
        Ok(())
    }

    /// Runs `f` on the host (made on first use), in the blocking pool.
    async fn with_host<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Host) -> Result<T, HostError> + Send + 'static,
    ) -> Result<T, NetworkError> {
        self.blocking(move |me| {
            let mut guard = plock(&me.host);
            if guard.is_none() {
                *guard = Some(Host::current()?);
            }
            match guard.as_mut() {
                Some(h) => f(h),
                None => Err(HostError::UnknownNetwork("host".into())),
            }
        })
        .await?
        .map_err(NetworkError::from)
    }

    /// Turns forwarding on (as docker), recording the value found the first time. When the
    /// agent is the one that turned it on (now or in an earlier run: the record says 0), the
    /// `forward` hook of Bolt's table drops what involves no Bolt network, so the host forwards
    /// nothing it did not forward before (docker sets iptables' `FORWARD` policy to `DROP`).
    fn ensure_forwarding(&self, host: &mut Host) -> Result<(), HostError> {
        let dir = self.root.join("network");
        let before = dir.join("ip_forward.before");
        let mut turned_on = std::fs::read_to_string(&before).is_ok_and(|s| s.trim() == "0");
        if !host.ip_forward()? {
            if !before.exists() {
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(&before, "0\n");
            }
            tracing::info!(
                "turning on net.ipv4.ip_forward (it was 0; recorded in {}); forwarding that \
                 involves no bolt network is dropped",
                before.display()
            );
            host.set_ip_forward(true)?;
            turned_on = true;
        }
        host.set_drop_other_forwarding(turned_on)
    }

    /// Sets up network `n` on the host (idempotent).
    async fn add_to_host(self: &Arc<Self>, n: NetworkInfo) -> Result<(), NetworkError> {
        let net = bridge_network(&n)?;
        self.blocking(move |me| -> Result<(), HostError> {
            let mut guard = plock(&me.host);
            if guard.is_none() {
                *guard = Some(Host::current()?);
            }
            let Some(host) = guard.as_mut() else {
                return Ok(());
            };
            // Already set up by this agent: `Host::add_network` would append the network's
            // postrouting rules again (every `bolt run` on it added three duplicates).
            if host.networks().get(&net.name) == Some(&net) {
                return Ok(());
            }
            me.ensure_forwarding(host)?;
            host.add_network(net)
        })
        .await??;
        Ok(())
    }

    /// `bolt network create`: checked by `decide` (name, subnet, overlap with the other
    /// networks), set up on the host (overlap with host addresses, bridge, rules), then
    /// recorded. Nothing is left when a step fails.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateNetworkRequest,
    ) -> Result<NetworkView, NetworkError> {
        BridgeNetwork::new(&req.name, &req.subnet, req.gateway, req.mtu)
            .map_err(|e| NetworkError::BadRequest(e.to_string()))?;
        if req.name == "none" || req.name == "host" {
            return Err(NetworkError::BadRequest(format!(
                "network name {} is reserved",
                req.name
            )));
        }
        let _ops = self.ops.lock().await;
        self.create_locked(req).await
    }

    async fn create_locked(
        self: &Arc<Self>,
        req: CreateNetworkRequest,
    ) -> Result<NetworkView, NetworkError> {
        let name = req.name.clone();
        let payloads = self
            .decide(Command::CreateNetwork {
                name: req.name.clone(),
                driver: DRIVER.to_owned(),
                subnet: req.subnet.clone(),
                gateway: req.gateway,
                mtu: req.mtu,
            })
            .await?;
        let info = payloads.iter().find_map(|p| match p {
            Payload::Network(NetworkEvent::Created {
                name,
                driver,
                subnet,
                gateway,
                mtu,
            }) => Some(NetworkInfo {
                name: name.clone(),
                driver: driver.clone(),
                subnet: subnet.clone(),
                gateway: *gateway,
                mtu: *mtu,
                node: self.node.node_id(),
                allocations: Default::default(),
            }),
            _ => None,
        });
        let Some(info) = info else {
            return Err(NetworkError::Task("decide made no network".into()));
        };
        self.add_to_host(info).await?;
        if let Err(e) = self.append(payloads).await {
            let n = name.clone();
            let _ = self.with_host(move |h| h.remove_network(&n)).await;
            return Err(e);
        }
        self.inspect(&name).await
    }

    /// The default network, created on first use.
    async fn ensure_default(self: &Arc<Self>) -> Result<(), NetworkError> {
        let exists = self
            .state(|s| s.networks.contains_key(DEFAULT_NETWORK))
            .await?;
        if !exists {
            self.create_locked(CreateNetworkRequest {
                name: DEFAULT_NETWORK.to_owned(),
                subnet: self.default_subnet.clone(),
                gateway: None,
                mtu: 0,
            })
            .await?;
        }
        Ok(())
    }

    /// `bolt network ls`.
    pub async fn list(self: &Arc<Self>) -> Result<Vec<NetworkView>, NetworkError> {
        self.state(|s| s.networks.values().map(network_view).collect())
            .await
    }

    /// `bolt network inspect`.
    pub async fn inspect(self: &Arc<Self>, name: &str) -> Result<NetworkView, NetworkError> {
        let n = name.to_owned();
        self.state(move |s| s.networks.get(&n).map(network_view))
            .await?
            .ok_or_else(|| NetworkError::NotFound(name.to_owned()))
    }

    /// `bolt network rm`: refused while a capsule holds an address on it.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<(), NetworkError> {
        let _ops = self.ops.lock().await;
        let payloads = self
            .decide(Command::RemoveNetwork {
                name: name.to_owned(),
            })
            .await?;
        let n = name.to_owned();
        self.with_host(move |h| {
            if h.networks().contains_key(&n) {
                h.remove_network(&n)
            } else {
                Ok(())
            }
        })
        .await?;
        self.append(payloads).await
    }

    /// Gives capsule `capsule` an address on `network` (kept when it already holds one there:
    /// a restart), a new namespace and its veth, and publishes `ports`. On any failure nothing
    /// is left and an address allocated here is released.
    pub async fn prepare(
        self: &Arc<Self>,
        capsule: &str,
        network: &str,
        ports: Vec<PortSpec>,
    ) -> Result<Prepared, NetworkError> {
        let _ops = self.ops.lock().await;
        if network == DEFAULT_NETWORK {
            self.ensure_default().await?;
        }
        let (net, held) = {
            let (n, c) = (network.to_owned(), capsule.to_owned());
            self.state(move |s| {
                s.networks.get(&n).cloned().map(|info| {
                    let held = info
                        .allocations
                        .iter()
                        .find(|(_, holder)| **holder == c)
                        .map(|(ip, _)| *ip);
                    (info, held)
                })
            })
            .await?
            .ok_or_else(|| NetworkError::NotFound(network.to_owned()))?
        };
        self.add_to_host(net).await?;
        let (ip, allocated) = match held {
            Some(ip) => (ip, false),
            None => {
                let payloads = self
                    .decide(Command::AllocateAddress {
                        network: network.to_owned(),
                        capsule: capsule.to_owned(),
                        ip: None,
                    })
                    .await?;
                let ip = payloads.iter().find_map(|p| match p {
                    Payload::Network(NetworkEvent::AddressAllocated { ip, .. }) => Some(*ip),
                    _ => None,
                });
                let Some(ip) = ip else {
                    return Err(NetworkError::Task("decide allocated no address".into()));
                };
                self.append(payloads).await?;
                (ip, true)
            }
        };
        let (n, c) = (network.to_owned(), capsule.to_owned());
        let made = self
            .with_host(move |h| {
                // A restart: the earlier namespace (and its veth) ended with the capsule.
                if h.attachments().contains_key(&c) {
                    h.detach(&c)?;
                }
                // The state just handed out `ip`, so whoever the model still has on it was
                // removed and its detach has not run yet (the removal event releases the
                // address first): detach it now instead of refusing the address.
                let stale: Vec<String> = h
                    .attachments()
                    .iter()
                    .filter(|(holder, a)| a.network == n && a.ip == ip && **holder != c)
                    .map(|(holder, _)| holder.clone())
                    .collect();
                for holder in stale {
                    h.detach(&holder)?;
                }
                let netns = Netns::new_unnamed()?;
                let att = h.attach(&n, &c, ip, &ports, &netns)?.clone();
                Ok((netns, att))
            })
            .await;
        match made {
            Ok((netns, attachment)) => Ok(Prepared {
                netns,
                attachment,
                allocated,
            }),
            Err(e) => {
                if allocated {
                    self.release_locked(capsule, network, ip).await;
                }
                Err(e)
            }
        }
    }

    /// Undoes [`Networks::prepare`] after a start that failed.
    pub async fn abandon(self: &Arc<Self>, capsule: &str, prepared: Prepared) {
        let _ops = self.ops.lock().await;
        let c = capsule.to_owned();
        let _ = self.with_host(move |h| h.detach(&c).map(|_| ())).await;
        if prepared.allocated {
            let a = &prepared.attachment;
            self.release_locked(capsule, &a.network, a.ip).await;
        }
    }

    async fn release_locked(self: &Arc<Self>, capsule: &str, network: &str, ip: Ipv4Addr) {
        let cmd = Command::ReleaseAddress {
            network: network.to_owned(),
            capsule: capsule.to_owned(),
            ip,
        };
        match self.decide(cmd).await {
            Ok(p) => {
                if let Err(e) = self.append(p).await {
                    tracing::warn!("release {ip} on {network}: {e}");
                }
            }
            Err(e) => tracing::warn!("release {ip} on {network}: {e}"),
        }
    }

    /// A removed capsule: its veth and rules go (its addresses were released by the removal).
    ///
    /// The veth is deleted first, outside the locks: deleting a link waits for the kernel (an
    /// RCU grace period, 15-30 ms here), and under the locks it held up every `bolt run` on a
    /// bridge network that came meanwhile (`--bench net`, back to back). `Host::detach` then
    /// finds it gone and only updates the model and the rules. A start that gets the released
    /// address before that detaches this capsule itself ([`Networks::prepare`]). Only called
    /// for a removed capsule, which nothing attaches again.
    pub async fn detach(self: &Arc<Self>, capsule: &str) {
        let c = capsule.to_owned();
        let target = self
            .blocking(move |me| {
                let guard = plock(&me.host);
                let h = guard.as_ref()?;
                let veth = h.attachments().get(&c)?.veth.clone();
                Some((h.netns().try_clone().ok(), veth))
            })
            .await
            .ok()
            .flatten();
        let Some((ns, veth)) = target else {
            return;
        };
        if let Some(ns) = ns {
            let removed = self
                .blocking(move |_| bolt_capsule::net::link::remove(&ns, &veth))
                .await;
            if let Ok(Err(e)) = removed {
                tracing::debug!(capsule = %short(capsule), "delete the veth: {e}");
            }
        }
        let _ops = self.ops.lock().await;
        let c = capsule.to_owned();
        let attached = self
            .blocking(move |me| {
                plock(&me.host)
                    .as_ref()
                    .is_some_and(|h| h.attachments().contains_key(&c))
            })
            .await
            .unwrap_or(false);
        if attached {
            let c = capsule.to_owned();
            if let Err(e) = self.with_host(move |h| h.detach(&c).map(|_| ())).await {
                tracing::warn!(capsule = %short(capsule), "detach: {e}");
            }
        }
    }

    /// At agent start, before capsules are re-adopted: every network of the state set up again
    /// (existing bridges are found; rules of the earlier run keep working), addresses held by
    /// capsules that do not exist released.
    pub async fn restore(self: &Arc<Self>) -> Result<(), NetworkError> {
        let _ops = self.ops.lock().await;
        let me = self.node.node_id();
        let nets: Vec<NetworkInfo> = self
            .state(move |s| {
                s.networks
                    .values()
                    .filter(|n| n.node == me)
                    .cloned()
                    .collect()
            })
            .await?;
        for n in nets {
            let name = n.name.clone();
            if let Err(e) = self.add_to_host(n).await {
                tracing::warn!(network = %name, "set up again: {e}");
            }
        }
        // Addresses of capsules that never got recorded (a crash between the two events).
        let orphans: Vec<(String, String, Ipv4Addr)> = self
            .state(|s| {
                let mut out = Vec::new();
                for n in s.networks.values() {
                    for (ip, c) in n.allocations.iter() {
                        let live = s
                            .capsules
                            .get(c)
                            .is_some_and(|c| c.status != CapsuleStatus::Removed);
                        if !live {
                            out.push((c.clone(), n.name.clone(), *ip));
                        }
                    }
                }
                out
            })
            .await?;
        for (c, n, ip) in orphans {
            self.release_locked(&c, &n, ip).await;
        }
        Ok(())
    }

    /// At agent start, after capsules are re-adopted: the running ones adopted (model only),
    /// veths and bridges no capsule or network owns deleted, the rule table rewritten from
    /// the model.
    pub async fn adopt_running(self: &Arc<Self>) -> Result<(), NetworkError> {
        let _ops = self.ops.lock().await;
        let me = self.node.node_id();
        let running: Vec<(String, String, Ipv4Addr, Vec<String>)> = self
            .state(move |s| {
                let mut out = Vec::new();
                for n in s.networks.values() {
                    for (ip, c) in n.allocations.iter() {
                        if let Some(info) = s.capsules.get(c) {
                            if info.node == me && info.status == CapsuleStatus::Running {
                                out.push((c.clone(), n.name.clone(), *ip, info.spec.ports.clone()));
                            }
                        }
                    }
                }
                out
            })
            .await?;
        let any_networks = self.state(|s| !s.networks.is_empty()).await?;
        if !any_networks && running.is_empty() {
            // Nothing of ours can be on this host; do not touch it (or need root).
            let has_host = self.blocking(|me| plock(&me.host).is_some()).await?;
            if !has_host {
                return Ok(());
            }
        }
        self.with_host(move |h| {
            let mut known = BTreeSet::new();
            for (c, n, ip, ports) in running {
                known.insert(c.clone());
                if h.attachments().contains_key(&c) {
                    continue;
                }
                let specs = ports::parse_all(&ports).unwrap_or_default();
                if let Err(e) = h.adopt(&n, &c, ip, &specs) {
                    tracing::warn!(capsule = %short(&c), "adopt: {e}");
                }
            }
            let gone = h.cleanup_leftovers(known.iter().map(String::as_str))?;
            if !gone.is_empty() {
                tracing::info!("removed leftover veths: {}", gone.join(", "));
            }
            let stale = h.remove_stale_bridges()?;
            if !stale.is_empty() {
                tracing::info!("removed stale bridges: {}", stale.join(", "));
            }
            h.sync_rules()
        })
        .await
    }
}

/// Where the per-capsule `/etc` files are made (re-exported for the capsule service).
pub use crate::service::etc_files::write_etc_files;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::networks::{plan, NetworkChoice};

    #[test]
    fn network_and_ports_parse_before_anything_is_made() {
        assert_eq!(plan("none", &[]).unwrap().0, NetworkChoice::None);
        assert_eq!(plan("host", &[]).unwrap().0, NetworkChoice::Host);
        let (c, p) = plan("bridge", &["127.0.0.1:8080:80/udp".into()]).unwrap();
        assert_eq!(c, NetworkChoice::Bridge("bridge".into()));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].host_port, 8080);
        assert!(plan("none", &["80:80".into()])
            .unwrap_err()
            .contains("bridge"));
        assert!(plan("bridge", &["80:80/sctp".into()]).is_err());
        assert!(plan("bridge", &["0:80".into()]).is_err());
        assert!(plan("bad name", &[]).is_err());
    }

    #[test]
    fn the_default_network_keeps_bolt0() {
        assert_eq!(bridge_of(DEFAULT_NETWORK), "bolt0");
        assert!(bridge_of("web").starts_with("bolt-"));
    }
}
