//! The image routes' paths and JSON shapes (`/v1/images...`), shared by the API and the client.
//! Built from the image store's records; never imports another agent module.

use std::path::PathBuf;

use bolt_capsule::image::{
    Digest, GcReport, ImageRecord, ImageRef, Phase, Progress, Pulled, Pushed,
};
use serde::{Deserialize, Serialize};

/// `GET /v1/images`: every stored image.
pub const PATH_IMAGES: &str = "/v1/images";
/// `DELETE /v1/images/{reference}` (the reference percent-encoded as one path segment).
pub const PATH_IMAGE: &str = "/v1/images/{reference}";
/// `POST /v1/images/pull` (streamed).
pub const PATH_PULL: &str = "/v1/images/pull";
/// `POST /v1/images/tag`.
pub const PATH_TAG: &str = "/v1/images/tag";
/// `POST /v1/images/push` (streamed).
pub const PATH_PUSH: &str = "/v1/images/push";
/// `POST /v1/images/prune`.
pub const PATH_PRUNE: &str = "/v1/images/prune";
/// `POST /v1/images/import` (streamed).
pub const PATH_IMPORT: &str = "/v1/images/import";
/// `POST /v1/images/export`.
pub const PATH_EXPORT: &str = "/v1/images/export";

/// Every image route.
pub const ROUTES: [&str; 8] = [
    PATH_IMAGES,
    PATH_IMAGE,
    PATH_PULL,
    PATH_TAG,
    PATH_PUSH,
    PATH_PRUNE,
    PATH_IMPORT,
    PATH_EXPORT,
];

/// The content type of streamed answers.
pub const NDJSON: &str = "application/x-ndjson";

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerView {
    /// Compressed blob digest.
    pub digest: String,
    /// Uncompressed digest (names the unpacked directory).
    pub diff_id: String,
    /// Compressed size in bytes.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

/// A stored image, as `GET /v1/images` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    /// The normalized reference, e.g. `127.0.0.1:5000/team/app:v1`.
    pub reference: String,
    /// `registry/repository`.
    pub repository: String,
    /// The tag (None for a reference pinned by digest).
    pub tag: Option<String>,
    /// Manifest digest.
    pub digest: String,
    /// Config blob digest (the image id).
    pub config_digest: String,
    /// Digest of the index the manifest was picked from, if any.
    pub index_digest: Option<String>,
    /// Compressed size: config plus layers.
    pub size: u64,
    /// Operating system.
    pub os: String,
    /// Architecture.
    pub architecture: String,
    /// When the image was built (`created` of its config, RFC 3339), if it says.
    pub created: Option<String>,
    /// When this node stored the reference (ms since the epoch).
    pub stored_at_ms: u64,
    /// Layers, base first.
    pub layers: Vec<LayerView>,
}

impl ImageView {
    /// The view of a store record.
    pub fn new(rec: &ImageRecord, created: Option<String>) -> ImageView {
        let (repository, tag) = match ImageRef::parse(&rec.reference) {
            Ok(r) => (r.name(), r.tag().map(str::to_string)),
            Err(_) => (rec.reference.clone(), None),
        };
        ImageView {
            reference: rec.reference.clone(),
            repository,
            tag,
            digest: rec.manifest_digest.to_string(),
            config_digest: rec.config_digest.to_string(),
            index_digest: rec.index_digest.as_ref().map(Digest::to_string),
            size: rec.size,
            os: rec.os.clone(),
            architecture: rec.architecture.clone(),
            created,
            stored_at_ms: rec.stored_at_ms,
            layers: rec
                .layers
                .iter()
                .map(|l| LayerView {
                    digest: l.digest.to_string(),
                    diff_id: l.diff_id.to_string(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                })
                .collect(),
        }
    }
}

/// The result of a pull or of one imported image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullView {
    /// The stored image.
    pub image: ImageView,
    /// Blobs this operation fetched (from the registry or the archive).
    pub fetched: Vec<String>,
    /// Blobs that were in the store already.
    pub reused: Vec<String>,
    /// Layers this operation unpacked (diff_ids).
    pub unpacked: Vec<String>,
    /// Cursor of the last event recording it (None: the state knew it already).
    pub cursor: Option<u64>,
}

impl PullView {
    /// The view of a pull's (or one import's) result.
    pub fn new(p: &Pulled, created: Option<String>, cursor: Option<u64>) -> PullView {
        let strings = |v: &[Digest]| v.iter().map(Digest::to_string).collect();
        PullView {
            image: ImageView::new(&p.record, created),
            fetched: strings(&p.fetched),
            reused: strings(&p.reused),
            unpacked: strings(&p.unpacked),
            cursor,
        }
    }
}

/// A reference set or removed: the result of a tag or an `rmi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefView {
    /// The normalized reference.
    pub reference: String,
    /// The manifest digest it names (named, for a removal).
    pub digest: String,
    /// Cursor of the last event recording it (None: nothing to record).
    pub cursor: Option<u64>,
}

/// The result of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushView {
    /// The reference pushed to.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// Blobs uploaded.
    pub uploaded: Vec<String>,
    /// Blobs the repository had already.
    pub skipped: Vec<String>,
}

impl From<Pushed> for PushView {
    fn from(p: Pushed) -> PushView {
        PushView {
            reference: p.reference,
            digest: p.digest.to_string(),
            uploaded: p.uploaded.iter().map(Digest::to_string).collect(),
            skipped: p.skipped.iter().map(Digest::to_string).collect(),
        }
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneView {
    /// Blobs removed.
    pub blobs: Vec<String>,
    /// Unpacked layers removed (diff_ids).
    pub layers: Vec<String>,
    /// Bytes of blobs freed.
    pub blob_bytes: u64,
}

impl From<GcReport> for PruneView {
    fn from(r: GcReport) -> PruneView {
        PruneView {
            blobs: r.blobs.iter().map(Digest::to_string).collect(),
            layers: r.layers.iter().map(Digest::to_string).collect(),
            blob_bytes: r.blob_bytes,
        }
    }
}

/// The result of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportView {
    /// Where the layout was written.
    pub path: PathBuf,
    /// `oci-dir` or `oci-tar`.
    pub format: String,
    /// The references exported.
    pub references: Vec<String>,
}

/// One progress report of a streamed operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressView {
    /// The blob (for layers: the compressed digest).
    pub digest: String,
    /// `fetching`, `fetched`, `reused`, `unpacking`, `unpacked`, `pushing` or `pushed`.
    pub phase: String,
    /// Bytes done.
    pub done: u64,
    /// Bytes expected, when known.
    pub total: Option<u64>,
}

/// The name of a progress phase on the wire.
pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Fetching => "fetching",
        Phase::Fetched => "fetched",
        Phase::Reused => "reused",
        Phase::Unpacking => "unpacking",
        Phase::Unpacked => "unpacked",
        Phase::Pushing => "pushing",
        Phase::Pushed => "pushed",
    }
}

impl From<&Progress> for ProgressView {
    fn from(p: &Progress) -> ProgressView {
        ProgressView {
            digest: p.digest.to_string(),
            phase: phase_name(p.phase).to_string(),
            done: p.done,
            total: p.total,
        }
    }
}

/// One line of a streamed answer (`application/x-ndjson`): progress lines, then exactly one
/// `result` or `error` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamLine<T> {
    /// `{"progress": {...}}`.
    Progress(ProgressView),
    /// `{"result": ...}`: the operation succeeded.
    Result(T),
    /// `{"error": "one line"}`: the operation failed.
    Error(String),
}

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// What to pull, e.g. `127.0.0.1:5000/app:v1`.
    pub reference: String,
    /// `os/arch[/variant]` to pick from an index (default linux/amd64).
    #[serde(default)]
    pub platform: Option<String>,
}

/// `POST /v1/images/tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRequest {
    /// A stored reference.
    pub source: String,
    /// The new name.
    pub target: String,
}

/// `POST /v1/images/push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// A stored reference; pushed to the registry and repository it names.
    pub reference: String,
}

/// `POST /v1/images/import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRequest {
    /// An OCI image layout directory or tar, or a docker-archive tar, on the agent's host.
    pub path: PathBuf,
    /// Name for the imported image (needed when the archive names none).
    #[serde(default)]
    pub reference: Option<String>,
}

/// `POST /v1/images/export`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    /// Stored references to export.
    pub references: Vec<String>,
    /// Where to write, on the agent's host; must not exist.
    pub path: PathBuf,
    /// `oci-tar` (default) or `oci-dir`.
    #[serde(default)]
    pub format: Option<String>,
}
