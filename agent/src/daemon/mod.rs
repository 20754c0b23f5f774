//! `bolt agent`: one daemon per root, and the composition root of the agent's layers. Takes the
//! root's lock, opens the node key and the log, announces the node, builds the services in
//! dependency order ([`compose`]) and hands the API router what each route needs, serves the
//! API on the unix socket until told to stop, then records the stop, closes the streams and
//! removes the socket.
//!
//! Before it reads anything it checks the root ([`root`]: owner, mode, no symbolic links, no
//! capsules without their key and log) and the socket ([`socket`]: who may connect).
//!
//! This module alone may import every layer; the next issues wire the mesh, DNS, Surge and the
//! placement planners here too (docs/ARCHITECTURE.md).

pub mod root;
pub mod socket;

use std::future::{Future, IntoFuture};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bolt_events::{KeyError, Log, LogError, NodeKey};

use self::root::RootError;
use self::socket::{Access, Guarded, SocketError};
use crate::api;
use crate::cli::images::RegistryArgs;
use crate::cli::AgentArgs;
use crate::node::cluster::{Cluster, ClusterError};
use crate::node::{Node, NodeError, NodeOptions};
use crate::service::capsules::CapsuleError;
use crate::service::images::{ImagesConfig, ImagesError};
use crate::service::{Services, ServicesError};

/// How long a stop waits for open requests and streams to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the agent keeps its files and listens.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent root: `agent.lock`, `node.key`, `events.redb`.
    pub root: PathBuf,
    /// The unix socket the API is served on.
    pub socket: PathBuf,
    /// What the node announces and how often it snapshots its state.
    pub node: NodeOptions,
    /// Registry settings of the image store at `ROOT/images`.
    pub images: ImagesConfig,
    /// Start even though `ROOT/capsules` has capsules and the node key or the log is gone
    /// (`--start-over`): they are then ended and removed as capsules no event records.
    pub start_over: bool,
    /// The mesh address to listen on (`--listen`); none: a single node.
    pub listen: Option<std::net::SocketAddr>,
    /// A member to join at the first start, and the token (`--join`, `--token`).
    pub join: Option<(std::net::SocketAddr, String)>,
    /// Lifetime of the node certificates this agent issues when it holds the CA.
    pub cert_ttl: time::Duration,
}

impl Config {
    /// `ROOT/agent.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("agent.lock")
    }

    /// `ROOT/node.key`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }

    /// `ROOT/events.redb`.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("events.redb")
    }
}

/// One step of the daemon that failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Root(#[from] RootError),
    #[error("another bolt agent is already running on root {root} (it holds {lock})")]
    AlreadyRunning { root: PathBuf, lock: PathBuf },
    #[error("lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Images(#[from] ImagesError),
    #[error("serve the API: {0}")]
    Serve(std::io::Error),
    #[error("background task failed: {0}")]
    Task(String),
    #[error("start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("install the metrics recorder: {0}")]
    Metrics(String),
    #[error("capsules: {0}")]
    Capsules(#[from] CapsuleError),
    #[error(transparent)]
    Services(#[from] ServicesError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// `bolt agent`: the async runtime, logging to stderr (`BOLT_LOG`), the Prometheus recorder,
/// SIGTERM/SIGINT as the stop, then [`run`].
pub fn main(args: AgentArgs, socket: PathBuf) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("BOLT_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .map_err(|e| DaemonError::Metrics(e.to_string()))?;
        let mut node = NodeOptions::for_this_host();
        node.snapshot_every = args.snapshot_every;
        node.default_network = args.default_network;
        node.metrics = Some(handle);
        node.addr = args.advertise.or(args.listen).map(|a| a.to_string());
        let config = Config {
            root: args.root,
            socket,
            node,
            images: images_config(args.registry),
            start_over: args.start_over,
            listen: args.listen,
            join: args.join.zip(args.token),
            cert_ttl: time::Duration::seconds(args.cert_ttl.as_secs() as i64),
        };
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM".to_string(),
                _ = int.recv() => "SIGINT".to_string(),
            }
        };
        run(config, shutdown).await
    })
}

/// The image store's registry settings from `bolt agent`'s flags.
fn images_config(a: RegistryArgs) -> ImagesConfig {
    ImagesConfig {
        insecure_registries: a.insecure_registries,
        registry_auth: a.registry_auth,
        max_layer_bytes: a.max_layer_bytes,
    }
}

/// Run the agent until `shutdown` resolves (with the reason recorded in `node.stopped`).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = String>,
) -> Result<(), DaemonError> {
    root::prepare(&config.root)?;
    let lock_path = config.lock_path();
    let lock_file = root::open_lock(&lock_path)?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    let mut guard = lock.try_write().map_err(|source| {
        if source.kind() == ErrorKind::WouldBlock {
            DaemonError::AlreadyRunning {
                root: config.root.clone(),
                lock: lock_path.clone(),
            }
        } else {
            DaemonError::Lock {
                path: lock_path.clone(),
                source,
            }
        }
    })?;
    // The pid, for people looking at the lock; the flock is what counts.
    let _ = guard
        .set_len(0)
        .and_then(|()| writeln!(&mut *guard, "{}", std::process::id()));

    root::refuse_symlinks(&config.root)?;
    root::refuse_lost_history(
        &config.root,
        &config.key_path(),
        &config.log_path(),
        config.start_over,
    )?;
    let access = Access::for_this_process()?;
    socket::prepare(&config.socket, &access)?;

    let t = Instant::now();
    let key_path = config.key_path();
    let key = blocking(move || NodeKey::load_or_create(&key_path)).await??;
    if let Some((addr, token)) = &config.join {
        let advertise = config.node.addr.clone().unwrap_or_default();
        if crate::node::cluster::join_at_start(
            &config.root,
            &key,
            &config.node.name,
            &advertise,
            *addr,
            token,
        )
        .await?
        {
            tracing::info!("joined the cluster of {addr}");
        }
    }
    let log_path = config.log_path();
    let log = blocking(move || Log::open(&log_path, key)).await??;
    let opened = t.elapsed();
    let node = {
        let opts = config.node.clone();
        blocking(move || Node::open(log, opts)).await??
    };
    let restored = t.elapsed();
    {
        let node = Arc::clone(&node);
        blocking(move || node.start()).await??;
    }
    let services = compose(node.clone(), &config).await?;
    let cluster = {
        let (node, root, listen, ttl) = (
            Arc::clone(&node),
            config.root.clone(),
            config.listen,
            config.cert_ttl,
        );
        blocking(move || Cluster::open(node, &root, listen, ttl)).await??
    };
    cluster.start()?;

    let listener = socket::bind(&config.socket, &access)?;
    let socket_file = SocketFile(config.socket.clone());
    metrics::counter!(socket::METRIC_REFUSED).increment(0);
    let listener = Guarded { listener, access };
    tracing::info!(
        node = %node.node_id().short(),
        root = %config.root.display(),
        socket = %config.socket.display(),
        "bolt agent {} serving; log open {} ms, state restored {} ms, ready {} ms",
        node.options().version,
        opened.as_millis(),
        (restored - opened).as_millis(),
        t.elapsed().as_millis(),
    );

    let follower = tokio::spawn(follow_head(Arc::clone(&node)));
    let upkeep = node.options().metrics.clone().map(|handle| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    });

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = api::router(&services).merge(api::cluster::routes(Arc::clone(&cluster)));
    let mut server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );

    let mut result = Ok(());
    let server_done = tokio::select! {
        reason = shutdown => {
            tracing::info!("stopping: {reason}");
            let stopping = Arc::clone(&node);
            if let Err(e) = blocking(move || stopping.stop(&reason)).await.and_then(|r| r.map_err(Into::into)) {
                tracing::error!("record node.stopped: {e}");
                result = Err(e);
            }
            false
        }
        served = &mut server => {
            result = Err(match served {
                Ok(Ok(())) => DaemonError::Serve(std::io::Error::other("the server stopped")),
                Ok(Err(e)) => DaemonError::Serve(e),
                Err(e) => DaemonError::Task(e.to_string()),
            });
            true
        }
    };

    node.begin_shutdown();
    cluster.close();
    let _ = stop_tx.send(());
    if !server_done
        && tokio::time::timeout(DRAIN_TIMEOUT, &mut server)
            .await
            .is_err()
    {
        tracing::warn!("open requests did not finish in {DRAIN_TIMEOUT:?}; dropping them");
        server.abort();
    }
    if !node.drain_streams(DRAIN_TIMEOUT).await {
        tracing::warn!("event streams did not finish in {DRAIN_TIMEOUT:?}; dropping them");
    }
    follower.abort();
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    drop(socket_file);
    drop(guard);
    tracing::info!("stopped");
    result
}

/// Builds the node's services ([`Services::open`], in dependency order, each handed only
/// what it uses) and brings them back to what the state says: the image store reconciled with
/// the log, networks set up again before capsules restart on them, running capsules
/// re-adopted, then their network attachments.
async fn compose(node: Arc<Node>, config: &Config) -> Result<Services, DaemonError> {
    let services = {
        let (root, cfg) = (config.root.clone(), config.images.clone());
        blocking(move || Services::open(node, &root, &cfg)).await??
    };
    // The events a stop between a store change and its event left out.
    let n = services.images.reconcile().await?;
    if n > 0 {
        tracing::info!("recorded {n} image event(s) the store had and the log lacked");
    }
    if let Err(e) = services.networks.restore().await {
        tracing::warn!("set up networks again: {e}");
    }
    // Re-adopt the running capsules, record the exits no agent saw.
    if let Err(e) = services.capsules.recover().await {
        tracing::warn!("re-adopt capsules: {e}");
    }
    // Then the attachments of the running ones; leftovers of the others removed.
    if let Err(e) = services.networks.adopt_running().await {
        tracing::warn!("adopt capsule networks: {e}");
    }
    Ok(services)
}

/// Keep the live state folded up to the head as commits land (from any writer).
async fn follow_head(node: Arc<Node>) {
    let mut head = node.watch_head();
    while head.changed().await.is_ok() {
        let n = Arc::clone(&node);
        match tokio::task::spawn_blocking(move || n.sync()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("fold new events: {e}"),
            Err(e) => tracing::warn!("fold new events: {e}"),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DaemonError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))
}

/// Removes the socket file when the daemon ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
