//! Pure parsing of manifests, indexes and image configs (OCI and Docker schema 2), and platform
//! selection. No I/O: these are the functions the fuzz targets feed.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use super::digest::{Digest, DigestError};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every media type accepted for a manifest fetch, for the `Accept` header.
pub const MANIFEST_ACCEPT: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

const LAYER_TYPES: &[&str] = &[
    OCI_LAYER_TAR,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Most layers in one image.
pub const MAX_LAYERS: usize = 1024;

/// Why a manifest, index or config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid json: {0}")]
    Json(String),
    #[error("manifest schemaVersion {0} is not supported (schema 1 images are not supported; only schemaVersion 2)")]
    SchemaVersion(u64),
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("manifest is neither an image manifest nor an index")]
    UnknownKind,
    #[error("{what} has an invalid digest: {source}")]
    Digest { what: String, source: DigestError },
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    LayerMediaType { digest: String, media_type: String },
    #[error("config has unsupported media type {0:?}")]
    ConfigMediaType(String),
    #[error("manifest has {0} layers (at most {MAX_LAYERS})")]
    TooManyLayers(usize),
    #[error("{what} declares size {size}, over the limit of {limit} bytes")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("image index has no entry for platform {wanted} (available: {available})")]
    NoPlatform { wanted: String, available: String },
    #[error("image config is invalid: {0}")]
    Config(String),
    #[error("image config lists {diff_ids} diff_ids but the manifest has {layers} layers")]
    DiffIdCount { diff_ids: usize, layers: usize },
    #[error("invalid platform {0:?} (expected os/arch[/variant])")]
    Platform(String),
}

/// A descriptor: what a manifest or index points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type of the target.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Platform (index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The platform object of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlatformSpec {
    /// CPU architecture, e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// CPU variant, e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A platform to select from an index: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system.
    pub os: String,
    /// Architecture.
    pub architecture: String,
    /// Variant, if it matters.
    pub variant: Option<String>,
}

impl Default for Platform {
    /// linux/amd64.
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = ManifestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(ManifestError::Platform(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{}", self.os, self.architecture, v),
            None => write!(f, "{}/{}", self.os, self.architecture),
        }
    }
}

impl Platform {
    /// Whether an index entry's platform fits this one. A wanted variant must match (`arm64`
    /// defaults to `v8`); with none wanted, any variant fits.
    pub fn matches(&self, p: &PlatformSpec) -> bool {
        if p.os != self.os || p.architecture != self.architecture {
            return false;
        }
        match &self.variant {
            None => true,
            Some(want) => {
                let have = p
                    .variant
                    .clone()
                    .or_else(|| (p.architecture == "arm64").then(|| "v8".to_string()));
                have.as_deref() == Some(want.as_str())
            }
        }
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u64,
    /// The manifest's own media type.
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u64,
    /// The index's own media type.
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    /// Entries.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// One image.
    Image(ImageManifest),
    /// Several, by platform.
    Index(ImageIndex),
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Parse a manifest or index. `content_type` is the HTTP `Content-Type` if known; the document's
/// own `mediaType` wins, then its shape decides.
pub fn parse_manifest(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            what: "manifest".into(),
            size: bytes.len() as u64,
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    let version = probe.schema_version.unwrap_or(0);
    if version != 2 {
        return Err(ManifestError::SchemaVersion(version));
    }
    let media_type = probe
        .media_type
        .clone()
        .or_else(|| {
            content_type.map(|c| c.split(';').next().unwrap_or_default().trim().to_string())
        })
        .filter(|m| !m.is_empty() && m != "application/json" && m != "application/octet-stream");
    let is_index = match media_type.as_deref() {
        Some(OCI_INDEX) | Some(DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
        Some(other) => return Err(ManifestError::MediaType(other.to_string())),
        None if probe.manifests.is_some() => true,
        None if probe.config.is_some() => false,
        None => return Err(ManifestError::UnknownKind),
    };
    if is_index {
        let idx: ImageIndex =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        Ok(Parsed::Index(idx))
    } else {
        let m: ImageManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        validate_image_manifest(&m)?;
        Ok(Parsed::Image(m))
    }
}

/// Check an image manifest's config and layer media types, counts and sizes.
pub fn validate_image_manifest(m: &ImageManifest) -> Result<(), ManifestError> {
    if m.layers.len() > MAX_LAYERS {
        return Err(ManifestError::TooManyLayers(m.layers.len()));
    }
    let cfg = m.config.media_type.as_str();
    if !(cfg == OCI_CONFIG || cfg == DOCKER_CONFIG || cfg.is_empty()) {
        return Err(ManifestError::ConfigMediaType(cfg.to_string()));
    }
    if m.config.size > MAX_CONFIG_BYTES {
        return Err(ManifestError::TooLarge {
            what: "config".into(),
            size: m.config.size,
            limit: MAX_CONFIG_BYTES,
        });
    }
    for l in &m.layers {
        if !LAYER_TYPES.contains(&l.media_type.as_str()) {
            return Err(ManifestError::LayerMediaType {
                digest: l.digest.to_string(),
                media_type: l.media_type.clone(),
            });
        }
    }
    Ok(())
}

/// Choose the index entry for `want`. Attestation entries (`unknown/unknown`) never match.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    want: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    let image_entries = index.manifests.iter().filter(|d| {
        d.media_type.is_empty() || d.media_type == OCI_MANIFEST || d.media_type == DOCKER_MANIFEST
    });
    let matching: Vec<&Descriptor> = image_entries
        .filter(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        .collect();
    // Prefer an entry without a variant (the plain one), else the first that fits.
    let best = matching
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_none()))
        .or(matching.first())
        .copied();
    best.ok_or_else(|| {
        let available: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        ManifestError::NoPlatform {
            wanted: want.to_string(),
            available: available.join(", "),
        }
    })
}

/// A parsed image config with its diff_ids checked.
#[derive(Debug, Clone)]
pub struct ParsedConfig {
    /// The OCI image configuration (entrypoint, env, user, workdir, ...).
    pub config: ImageConfiguration,
    /// Uncompressed layer digests, base first.
    pub diff_ids: Vec<Digest>,
}

/// Parse an image config and check its diff_ids against `layers` (the manifest's layer count).
pub fn parse_config(bytes: &[u8], layers: usize) -> Result<ParsedConfig, ManifestError> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ManifestError::TooLarge {
            what: "config".into(),
            size: bytes.len() as u64,
            limit: MAX_CONFIG_BYTES,
        });
    }
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Config(e.to_string()))?;
    let mut diff_ids = Vec::new();
    for (i, d) in config.rootfs().diff_ids().iter().enumerate() {
        let d = Digest::parse(d).map_err(|source| ManifestError::Digest {
            what: format!("diff_id {i}"),
            source,
        })?;
        diff_ids.push(d);
    }
    if diff_ids.len() != layers {
        return Err(ManifestError::DiffIdCount {
            diff_ids: diff_ids.len(),
            layers,
        });
    }
    Ok(ParsedConfig { config, diff_ids })
}

/// Layer compression, from the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression a layer media type names.
pub fn layer_compression(media_type: &str) -> Compression {
    if media_type.ends_with("+zstd") {
        Compression::Zstd
    } else if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
        Compression::Gzip
    } else {
        Compression::None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn manifest_json(layer_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":10}},"layers":[{{"mediaType":"{layer_type}","digest":"{}","size":20}}]}}"#,
            d(1),
            d(2)
        )
    }

    #[test]
    fn parses_oci_and_docker_manifests() {
        let Parsed::Image(m) =
            parse_manifest(manifest_json(OCI_LAYER_GZIP).as_bytes(), None).unwrap()
        else {
            panic!("not an image")
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.config.digest.to_string(), d(1));
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":10}},"layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","digest":"{}","size":20}}]}}"#,
            d(1),
            d(2)
        );
        assert!(matches!(
            parse_manifest(docker.as_bytes(), None).unwrap(),
            Parsed::Image(_)
        ));
    }

    #[test]
    fn refuses_bad_manifests() {
        assert!(matches!(
            parse_manifest(b"{", None),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            parse_manifest(br#"{"schemaVersion":1}"#, None),
            Err(ManifestError::SchemaVersion(1))
        ));
        assert!(matches!(
            parse_manifest(manifest_json("application/x-evil").as_bytes(), None),
            Err(ManifestError::LayerMediaType { .. })
        ));
        let bad_digest = manifest_json(OCI_LAYER_TAR).replace(&d(2), "sha256:../../etc");
        assert!(matches!(
            parse_manifest(bad_digest.as_bytes(), None),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            parse_manifest(br#"{"schemaVersion":2}"#, None),
            Err(ManifestError::UnknownKind)
        ));
    }

    #[test]
    fn selects_platform() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#,
            d(1),
            d(2),
            d(3)
        );
        let Parsed::Index(idx) = parse_manifest(idx.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(
            select_platform(&idx, &Platform::default())
                .unwrap()
                .digest
                .to_string(),
            d(2)
        );
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(
            select_platform(&idx, &arm).unwrap().digest.to_string(),
            d(1)
        );
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(
            select_platform(&idx, &arm).unwrap().digest.to_string(),
            d(1)
        );
        let s390: Platform = "linux/s390x".parse().unwrap();
        let err = select_platform(&idx, &s390).unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/amd64"),
            "{err}"
        );
        assert!("linux".parse::<Platform>().is_err());
    }

    #[test]
    fn config_diff_ids_must_match_layers() {
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            d(9)
        );
        assert_eq!(
            parse_config(cfg.as_bytes(), 1).unwrap().diff_ids[0].to_string(),
            d(9)
        );
        assert!(matches!(
            parse_config(cfg.as_bytes(), 2),
            Err(ManifestError::DiffIdCount { .. })
        ));
        assert!(parse_config(b"[]", 0).is_err());
    }
}
