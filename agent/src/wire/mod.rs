//! The shapes both sides of the `/v1` API speak: paths and routes, request and view types, the
//! attach framing, name rules, size/cpu/duration parsing and `--network` parsing. The server
//! (`api`, `service`) and the client (`client`, `cli`) both import it.
//!
//! This layer never imports another agent module: it is the bottom of the agent's layers
//! (`agent/tests/layers.rs` keeps the rule). Event payloads travel as `serde_json::Value` so an
//! older client still shows events of kinds it does not know.

pub mod capsules;
pub mod cluster;
pub mod filter;
pub mod frame;
pub mod images;
pub mod networks;
pub mod parse;
pub mod snapshots;
pub mod time;
pub mod volumes;

use bolt_events::{Appended, Cursor, Hash, NodeId, VerifyReport};
use serde::{Deserialize, Serialize};

/// `GET /v1/info`.
pub const PATH_INFO: &str = "/v1/info";
/// `GET /v1/events`.
pub const PATH_EVENTS: &str = "/v1/events";
/// `GET /v1/events/verify`.
pub const PATH_VERIFY: &str = "/v1/events/verify";
/// `GET /v1/events/stream` (WebSocket).
pub const PATH_STREAM: &str = "/v1/events/stream";
/// `GET /v1/state`.
pub const PATH_STATE: &str = "/v1/state";
/// `GET /v1/state/hash`.
pub const PATH_STATE_HASH: &str = "/v1/state/hash";
/// `GET /v1/openapi.json`.
pub const PATH_OPENAPI: &str = "/v1/openapi.json";
/// `GET /metrics` (Prometheus text).
pub const PATH_METRICS: &str = "/metrics";

/// Every route the agent serves.
pub const ROUTES: [&str; 34] = [
    PATH_INFO,
    PATH_EVENTS,
    PATH_VERIFY,
    PATH_STREAM,
    PATH_STATE,
    PATH_STATE_HASH,
    PATH_OPENAPI,
    PATH_METRICS,
    images::PATH_IMAGES,
    images::PATH_IMAGE,
    images::PATH_PULL,
    images::PATH_TAG,
    images::PATH_PUSH,
    images::PATH_PRUNE,
    images::PATH_IMPORT,
    images::PATH_EXPORT,
    capsules::PATH_CAPSULES,
    capsules::PATH_CAPSULE,
    capsules::PATH_STOP,
    capsules::PATH_START,
    capsules::PATH_KILL,
    capsules::PATH_LOGS,
    capsules::PATH_ATTACH,
    capsules::PATH_EXEC,
    capsules::PATH_TOP,
    networks::PATH_NETWORKS,
    networks::PATH_NETWORK,
    volumes::PATH_VOLUMES,
    volumes::PATH_VOLUME,
    volumes::PATH_VOLUMES_PRUNE,
    snapshots::PATH_SNAPSHOTS,
    snapshots::PATH_SNAPSHOT,
    snapshots::PATH_SNAPSHOT_RESTORE,
    snapshots::PATH_COMMIT,
];

/// Default interval between state snapshots, in events (`bolt agent --snapshot-every`).
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;

/// The default `--default-network` of `bolt agent`: `bridge` as root (docker's default), `none`
/// rootless (bridges need root).
pub fn default_network() -> &'static str {
    if nix::unistd::geteuid().is_root() {
        "bridge"
    } else {
        "none"
    }
}

/// One event as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// Arrival position in this node's log.
    pub cursor: u64,
    /// The node that wrote the event (hex public key).
    pub origin: NodeId,
    /// Per-origin sequence number, from 1.
    pub seq: u64,
    /// Hybrid logical clock timestamp (milliseconds << 16 | logical).
    pub hlc: u64,
    /// Schema version the payload was written with.
    pub schema: u16,
    /// Dotted kind such as `node.started`.
    pub kind: String,
    /// The event's hash (its chain link).
    pub hash: Hash,
    /// The hash of the origin's previous event.
    pub prev: Hash,
    /// The payload as serde JSON (`{"node": {"started": {...}}}`).
    pub payload: serde_json::Value,
}

impl EventView {
    /// The view of an event as it landed in the log.
    pub fn from_appended(a: &Appended) -> EventView {
        let e = &a.event;
        EventView {
            cursor: a.cursor.0,
            origin: e.origin(),
            seq: e.seq(),
            hlc: e.hlc().0,
            schema: e.envelope.schema,
            kind: e.payload.kind().to_string(),
            hash: e.hash,
            prev: e.envelope.prev,
            // A payload is plain data; serializing it to a Value cannot fail.
            payload: serde_json::to_value(&e.payload).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Wall-clock milliseconds of the event's HLC.
    pub fn time_ms(&self) -> u64 {
        bolt_events::Hlc(self.hlc).physical_ms()
    }
}

/// `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoView {
    /// This node's id (hex public key).
    pub node_id: NodeId,
    /// Host name the node announced.
    pub name: String,
    /// Agent version.
    pub version: String,
    /// The highest cursor in the log.
    pub head: u64,
    /// Events in the log.
    pub events: u64,
    /// The cursor the live state has folded up to.
    pub state_cursor: u64,
    /// Hash of the live state at `state_cursor`.
    pub state_hash: Hash,
    /// Seconds since the agent started.
    pub uptime_s: u64,
}

/// `GET /v1/events/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyView {
    /// True when no fault was found.
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// Origins seen.
    pub origins: usize,
    /// One line per fault.
    pub faults: Vec<String>,
}

impl From<VerifyReport> for VerifyView {
    fn from(r: VerifyReport) -> VerifyView {
        VerifyView {
            ok: r.faults.is_empty(),
            events: r.events,
            origins: r.origins,
            faults: r.faults,
        }
    }
}

/// `GET /v1/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateView {
    /// The cursor the state is taken at.
    pub cursor: u64,
    /// The state's hash.
    pub hash: Hash,
    /// The state itself, as the state crate serializes it.
    pub state: serde_json::Value,
}

/// `GET /v1/state/hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashView {
    /// The cursor the state is taken at.
    pub cursor: u64,
    /// The state's hash.
    pub hash: Hash,
}

/// The body of every error response: `{"error": "..."}`, plus docker's `exit_code` (125, 126,
/// 127) when a capsule could not be started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, one line.
    pub error: String,
    /// docker's exit code for a failed start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// The query of `GET /v1/events` and `GET /v1/events/stream`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventsQuery {
    /// Only events after this cursor (default 0: from the start).
    pub since: Option<Cursor>,
    /// At most this many events (default and maximum [`MAX_EVENTS_PAGE`]).
    pub limit: Option<usize>,
    /// Only events of this origin: a node id hex prefix (at least 4 digits) or a node name.
    pub origin: Option<String>,
    /// Only events of this kind: exact (`capsule.started`) or a prefix (`capsule.`,
    /// `cluster.*`).
    pub kind: Option<String>,
}

/// The query of `GET /v1/state` and `GET /v1/state/hash`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AtQuery {
    /// Time travel: the state right after this cursor (default: the live state).
    pub at: Option<Cursor>,
}

/// The largest page `GET /v1/events` returns.
pub const MAX_EVENTS_PAGE: usize = 10_000;

/// The most events one filtered `GET /v1/events` request (or one stream step) looks at: past
/// them it answers what matched so far and the cursor it reached ([`filter::HEADER_CURSOR`]),
/// so a scan over many non-matching events stays bounded and the client continues from there.
pub const MAX_EVENTS_SCAN: usize = 50_000;

/// A page of `GET /v1/events`: the matching events and how far the scan got.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsPage {
    /// The matching events, in arrival order.
    pub events: Vec<EventView>,
    /// Every event up to this cursor was looked at: continue after it.
    pub cursor: Cursor,
    /// The log head when the page was read: the scan is complete once `cursor` reaches it.
    pub head: Cursor,
}

impl EventsPage {
    /// Whether events past `cursor` may remain (the page was full or the scan budget ran out).
    pub fn more(&self) -> bool {
        self.cursor < self.head
    }
}
