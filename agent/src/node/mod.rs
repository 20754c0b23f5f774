//! The running node: the log, the live state replica folded from it, the head bridged from the
//! log's commit hook to async watchers, and the one path every change takes: read the live
//! state, decide, append durably ([`Node::decide_append`], [`Node::record`]).
//!
//! Every method here but [`Node::drain_streams`] and the async [`Node::record`] is blocking (it
//! reads or writes the log): call it from `spawn_blocking`. The services, the HTTP handlers and
//! the daemon are thin drivers around it.
//!
//! This layer imports only `wire`; it never names a service (`service`, `api`, `client`, `cli`
//! or `shim`): a node knows events and state, not images or capsules.

pub mod cluster;
pub mod files;
pub mod mesh;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bolt_events::{Appended, Cursor, Log, LogError, NodeId, Payload};
use bolt_state::{decide, state_at, Command, DecideError, Replica, ReplicaError, State};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, watch};

use crate::wire::filter::{EventFilter, FilterError, KindFilter, OriginFilter};
pub use crate::wire::{default_network, DEFAULT_SNAPSHOT_EVERY};
use crate::wire::{
    EventView, EventsPage, HashView, InfoView, StateView, VerifyView, MAX_EVENTS_PAGE,
    MAX_EVENTS_SCAN,
};

/// How many events one catch-up read takes from the log.
const SYNC_BATCH: usize = 4096;
/// How many events one read of a filtered scan takes from the log.
const SCAN_BATCH: usize = 4096;

/// Counter of events taken into the live state, by kind.
pub const METRIC_APPENDED: &str = "bolt_events_appended_total";
/// Histogram of the time a local append takes to be durable.
pub const METRIC_APPEND_SECONDS: &str = "bolt_event_append_seconds";
/// Gauge of the log head cursor.
pub const METRIC_HEAD: &str = "bolt_log_head";
/// Counter of snapshots stored.
pub const METRIC_SNAPSHOTS: &str = "bolt_snapshots_total";

/// One step of the node that failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("restore state from the log: {0}")]
    Restore(ReplicaError),
    #[error("the state refused the command: {0}")]
    Decide(DecideError),
    #[error("cursor {at} is beyond the log head {head}")]
    BeyondHead { at: u64, head: u64 },
    #[error("state at cursor {at}: {source}")]
    StateAt { at: u64, source: ReplicaError },
    #[error("state is not representable as JSON: {0}")]
    Json(String),
    #[error("limit must be between 1 and {max}, got {got}")]
    Limit { got: usize, max: usize },
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("background task failed: {0}")]
    Task(String),
}

/// What the node announces and how it keeps its state.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Host name written in `node.started`.
    pub name: String,
    /// Agent version written in `node.started`.
    pub version: String,
    /// Store a state snapshot every this many events (0: never).
    pub snapshot_every: u64,
    /// The Prometheus handle `/metrics` renders (None: the recorder is not installed).
    pub metrics: Option<PrometheusHandle>,
    /// The mesh address announced in `node.started` (peers dial it), when the node has one.
    pub addr: Option<String>,
    /// The network of a capsule created without one: `bridge` (docker's default) for a root
    /// agent, `none` for a rootless one (bridges need root).
    pub default_network: String,
}

impl NodeOptions {
    /// Options with this host's name, this crate's version and the default snapshot interval.
    pub fn for_this_host() -> NodeOptions {
        NodeOptions {
            name: hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            metrics: None,
            default_network: default_network().to_owned(),
            addr: None,
        }
    }
}

/// The host name, or `unknown` when the system does not say.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The live node. Shared as `Arc<Node>` between the API handlers and the daemon.
pub struct Node {
    log: Log,
    node_id: NodeId,
    replica: Mutex<Replica>,
    head: Arc<watch::Sender<Cursor>>,
    shutdown: watch::Sender<bool>,
    streams: Mutex<Option<mpsc::Sender<()>>>,
    streams_done: tokio::sync::Mutex<mpsc::Receiver<()>>,
    opts: NodeOptions,
    started: Instant,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.node_id.short())
            .field("name", &self.opts.name)
            .finish_non_exhaustive()
    }
}

/// Held by every live event stream; the daemon waits for all of them to drop at shutdown.
#[derive(Debug)]
pub struct StreamTicket(#[allow(dead_code)] mpsc::Sender<()>);

impl Node {
    /// Restore the state from `log` (newest snapshot plus the events after it) and hook the
    /// log's commits to the head watch. Blocking.
    pub fn open(log: Log, opts: NodeOptions) -> Result<Arc<Node>, NodeError> {
        let replica = Replica::restore(&log).map_err(NodeError::Restore)?;
        let head = Arc::new(watch::Sender::new(log.head()));
        let hook = Arc::clone(&head);
        log.on_commit(Box::new(move |cursor| {
            hook.send_if_modified(|h| {
                let newer = cursor > *h;
                if newer {
                    *h = cursor;
                }
                newer
            });
        }));
        let (streams, streams_done) = mpsc::channel(1);
        let node = Arc::new(Node {
            node_id: log.node_id(),
            log,
            replica: Mutex::new(replica),
            head,
            shutdown: watch::Sender::new(false),
            streams: Mutex::new(Some(streams)),
            streams_done: tokio::sync::Mutex::new(streams_done),
            opts,
            started: Instant::now(),
        });
        node.sync()?;
        Ok(node)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The options the node runs with.
    pub fn options(&self) -> &NodeOptions {
        &self.opts
    }

    /// A watch of the log head; changes after every commit.
    pub fn watch_head(&self) -> watch::Receiver<Cursor> {
        self.head.subscribe()
    }

    /// A watch that turns true when the node begins to shut down.
    pub fn watch_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tell streams to finish: they send what is left and close.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        lock(&self.streams).take();
    }

    /// A ticket for a new event stream, or None once shutdown has begun.
    pub fn stream_ticket(&self) -> Option<StreamTicket> {
        lock(&self.streams)
            .as_ref()
            .map(|s| StreamTicket(s.clone()))
    }

    /// Wait (up to `timeout`) for every stream to finish after [`Node::begin_shutdown`]. Returns
    /// whether they all did.
    pub async fn drain_streams(&self, timeout: Duration) -> bool {
        let mut done = self.streams_done.lock().await;
        tokio::time::timeout(timeout, done.recv()).await.is_ok()
    }

    /// Append local events (durable on return), then fold them into the live state. Blocking.
    pub fn append(&self, payloads: Vec<Payload>) -> Result<Vec<Appended>, NodeError> {
        let t = Instant::now();
        let appended = self.log.append_batch(payloads)?;
        metrics::histogram!(METRIC_APPEND_SECONDS).record(t.elapsed().as_secs_f64());
        self.sync()?;
        Ok(appended)
    }

    /// The one change path: `f` reads the live state (folded up to the head, under the replica
    /// lock: keep it short) and returns the payloads that carry a decision out, or refuses;
    /// they are then appended in one durable batch. Returns what was appended (nothing when `f`
    /// decided there is nothing to record). Blocking. The caller serializes decisions that must
    /// not interleave (the services hold their operations lock around this).
    pub fn decide_append<E>(
        &self,
        f: impl FnOnce(&State) -> Result<Vec<Payload>, E>,
    ) -> Result<Vec<Appended>, E>
    where
        E: From<NodeError>,
    {
        let payloads = self.with_live_state(f)??;
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.append(payloads)?)
    }

    /// [`Node::decide_append`] on the blocking pool, for async callers.
    pub async fn record<E>(
        self: &Arc<Self>,
        f: impl FnOnce(&State) -> Result<Vec<Payload>, E> + Send + 'static,
    ) -> Result<Vec<Appended>, E>
    where
        E: From<NodeError> + Send + 'static,
    {
        let node = Arc::clone(self);
        tokio::task::spawn_blocking(move || node.decide_append(f))
            .await
            .map_err(|e| E::from(NodeError::Task(e.to_string())))?
    }

    /// [`Node::record`] of commands: each is decided on the live state as it is before the
    /// batch (use it for commands about different facts, or whose later ones do not depend on
    /// the earlier ones, such as an exit and a forced removal).
    pub async fn decide_commands<E>(
        self: &Arc<Self>,
        cmds: Vec<Command>,
    ) -> Result<Vec<Appended>, E>
    where
        E: From<NodeError> + From<DecideError> + Send + 'static,
    {
        self.record(move |s| {
            let mut out = Vec::new();
            for c in cmds {
                out.extend(decide(s, c).map_err(E::from)?);
            }
            Ok(out)
        })
        .await
    }

    /// Announce this node: `decide(StartNode)` on the live state, appended. Blocking.
    pub fn start(&self) -> Result<Vec<Appended>, NodeError> {
        let cmd = match &self.opts.addr {
            None => Command::StartNode {
                name: self.opts.name.clone(),
                version: self.opts.version.clone(),
            },
            Some(addr) => Command::StartNodeAt {
                name: self.opts.name.clone(),
                version: self.opts.version.clone(),
                addr: Some(addr.clone()),
                labels: Default::default(),
            },
        };
        self.decide_append(|s| decide(s, cmd).map_err(NodeError::Decide))
    }

    /// Record that this node stops: `decide(StopNode)` on the live state, appended. Blocking.
    pub fn stop(&self, reason: &str) -> Result<Vec<Appended>, NodeError> {
        self.sync()?;
        let cmd = Command::StopNode {
            node: self.node_id,
            reason: reason.to_string(),
        };
        self.decide_append(|s| decide(s, cmd).map_err(NodeError::Decide))
    }

    /// Fold every event past the live state's cursor into it, and store a snapshot when one is
    /// due. Returns the cursor the live state is at. Blocking.
    pub fn sync(&self) -> Result<Cursor, NodeError> {
        let mut replica = lock(&self.replica);
        loop {
            let batch = self.log.read_after(replica.cursor(), SYNC_BATCH)?;
            for a in &batch {
                replica.ingest(a);
                metrics::counter!(METRIC_APPENDED, "kind" => a.event.payload.kind()).increment(1);
            }
            if batch.len() < SYNC_BATCH {
                break;
            }
        }
        if self.opts.snapshot_every > 0 {
            match replica.maybe_snapshot(&self.log, self.opts.snapshot_every) {
                Ok(true) => metrics::counter!(METRIC_SNAPSHOTS).increment(1),
                Ok(false) => {}
                // A snapshot only speeds up the next start; the state itself is fine.
                Err(e) => tracing::warn!("state snapshot failed: {e}"),
            }
        }
        let cursor = replica.cursor();
        metrics::gauge!(METRIC_HEAD).set(self.log.head().0 as f64);
        Ok(cursor)
    }

    /// What `GET /v1/info` shows. Blocking.
    pub fn info(&self) -> Result<InfoView, NodeError> {
        self.sync()?;
        let head = self.log.head();
        let replica = lock(&self.replica);
        Ok(InfoView {
            node_id: self.node_id,
            name: self.opts.name.clone(),
            version: self.opts.version.clone(),
            head: head.0,
            events: head.0,
            state_cursor: replica.cursor().0,
            state_hash: replica.state().hash(),
            uptime_s: self.started.elapsed().as_secs(),
        })
    }

    /// Up to `limit` events after `since`, in arrival order. Blocking.
    pub fn events(&self, since: Cursor, limit: usize) -> Result<Vec<EventView>, NodeError> {
        Ok(self
            .events_page(since, limit, &EventFilter::default())?
            .events)
    }

    /// Up to `limit` events after `since` that pass `filter`, in arrival order, looking at no
    /// more than [`MAX_EVENTS_SCAN`] events: the page says the cursor the scan reached (the
    /// last returned event's when the page is full) and the head it ran towards. Reads the
    /// log only (no replica lock). Blocking.
    pub fn events_page(
        &self,
        since: Cursor,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<EventsPage, NodeError> {
        self.events_scan(since, limit, filter, MAX_EVENTS_SCAN)
    }

    /// [`Node::events_page`] looking at no more than `max_scan` events (at least one).
    /// Blocking.
    pub fn events_scan(
        &self,
        since: Cursor,
        limit: usize,
        filter: &EventFilter,
        max_scan: usize,
    ) -> Result<EventsPage, NodeError> {
        let max_scan = max_scan.max(1);
        if limit == 0 || limit > MAX_EVENTS_PAGE {
            return Err(NodeError::Limit {
                got: limit,
                max: MAX_EVENTS_PAGE,
            });
        }
        let head = self.log.head();
        let mut events = Vec::new();
        let mut reached = since;
        let mut scanned = 0;
        while events.len() < limit && scanned < max_scan && reached < head {
            let want = if filter.is_empty() {
                limit - events.len()
            } else {
                SCAN_BATCH
            }
            .min(max_scan - scanned);
            let batch = self.log.read_after(reached, want)?;
            if batch.is_empty() {
                // Nothing after `reached` at all: the scan has seen everything up to the head.
                reached = head;
                break;
            }
            for a in &batch {
                scanned += 1;
                reached = a.cursor;
                if filter.matches_parts(&a.event.origin(), a.event.payload.kind()) {
                    events.push(EventView::from_appended(a));
                    if events.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(EventsPage {
            events,
            cursor: reached,
            head: head.max(reached),
        })
    }

    /// The filter of `origin` (a node id hex prefix or a node name, resolved on the live state)
    /// and `kind`; either may be absent. Refuses values that cannot match anything. Blocking.
    pub fn event_filter(
        &self,
        origin: Option<&str>,
        kind: Option<&str>,
    ) -> Result<EventFilter, NodeError> {
        let kind = kind.map(KindFilter::parse).transpose()?;
        let origin = match origin {
            None => None,
            Some(value) => {
                let name = value.trim().to_string();
                let named = self.with_live_state(|s| {
                    s.nodes
                        .iter_unordered()
                        .filter(|(_, n)| n.name == name)
                        .map(|(id, _)| *id)
                        .collect::<Vec<_>>()
                })?;
                Some(OriginFilter::parse(value, named)?)
            }
        };
        Ok(EventFilter { origin, kind })
    }

    /// Check every chain link and signature. Blocking.
    pub fn verify(&self) -> Result<VerifyView, NodeError> {
        Ok(self.log.verify()?.into())
    }

    /// The live state (`at` None) or the state right after cursor `at`. Blocking.
    pub fn state(&self, at: Option<Cursor>) -> Result<StateView, NodeError> {
        self.with_state(at, |cursor, state| {
            Ok(StateView {
                cursor: cursor.0,
                hash: state.hash(),
                state: serde_json::to_value(state).map_err(|e| NodeError::Json(e.to_string()))?,
            })
        })
    }

    /// The hash of the live state or of the state right after `at`. Blocking.
    pub fn state_hash(&self, at: Option<Cursor>) -> Result<HashView, NodeError> {
        self.with_state(at, |cursor, state| {
            Ok(HashView {
                cursor: cursor.0,
                hash: state.hash(),
            })
        })
    }

    /// Run `f` on the live state, folded up to the head first. Keep `f` short: it holds the
    /// replica lock. Blocking.
    pub fn with_live_state<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, NodeError> {
        self.sync()?;
        let replica = lock(&self.replica);
        Ok(f(replica.state()))
    }

    fn with_state<T>(
        &self,
        at: Option<Cursor>,
        f: impl FnOnce(Cursor, &State) -> Result<T, NodeError>,
    ) -> Result<T, NodeError> {
        match at {
            None => {
                self.sync()?;
                let replica = lock(&self.replica);
                f(replica.cursor(), replica.state())
            }
            Some(at) => {
                let head = self.log.head();
                if at > head {
                    return Err(NodeError::BeyondHead {
                        at: at.0,
                        head: head.0,
                    });
                }
                let state = state_at(&self.log, at)
                    .map_err(|source| NodeError::StateAt { at: at.0, source })?;
                f(at, &state)
            }
        }
    }
}

/// Lock a mutex, taking the value even if a panicking thread poisoned it: the replica is only
/// changed through `ingest`, which never leaves it half-folded from our side.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
