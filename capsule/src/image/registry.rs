//! The registry client: OCI Distribution v2 on oci-client, with bearer-token and basic auth,
//! plain HTTP for loopback and insecure registries, HTTPS (rustls on ring) elsewhere.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::RegistryOperation;

use super::auth::Credentials;
use super::digest::Digest;
use super::manifest::{Descriptor, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use super::reference::{is_loopback_host, ImageRef};

/// A failed registry call, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("build http client for {registry}: {source}")]
    Client {
        registry: String,
        source: OciDistributionError,
    },
    #[error("authenticate to {registry}: {source}")]
    Auth {
        registry: String,
        source: OciDistributionError,
    },
    #[error("fetch manifest {reference}: {source}")]
    Manifest {
        reference: String,
        source: OciDistributionError,
    },
    #[error("manifest {reference} is {size} bytes, over the limit of {MAX_MANIFEST_BYTES}")]
    ManifestTooLarge { reference: String, size: usize },
    #[error("manifest {reference}: registry returned digest {got}, expected {expected}")]
    ManifestDigest {
        reference: String,
        expected: String,
        got: String,
    },
    #[error("fetch blob {digest} from {repository}: {source}")]
    Blob {
        repository: String,
        digest: String,
        source: OciDistributionError,
    },
    #[error("push blob {digest} to {repository}: {source}")]
    PushBlob {
        repository: String,
        digest: String,
        source: OciDistributionError,
    },
    #[error("push manifest {reference}: {source}")]
    PushManifest {
        reference: String,
        source: OciDistributionError,
    },
    #[error("invalid media type {0:?}")]
    MediaType(String),
}

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Credentials by registry host.
    pub credentials: Credentials,
    /// Registries (`host[:port]`) reached over plain HTTP although not on loopback.
    pub insecure: Vec<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout between reads of a response.
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            credentials: Credentials::none(),
            insecure: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
        }
    }
}

impl RegistryConfig {
    /// Whether `registry` is reached over plain HTTP: loopback, or listed as insecure.
    pub fn plain_http(&self, registry: &str) -> bool {
        is_loopback_host(registry)
            || self
                .insecure
                .iter()
                .any(|r| r.eq_ignore_ascii_case(registry))
    }
}

/// A manifest as fetched: the exact bytes (their digest is verified).
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Raw bytes.
    pub bytes: Bytes,
    /// Their digest.
    pub digest: Digest,
}

/// A blob download in progress.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

/// One client per registry host, with credentials applied.
#[derive(Clone)]
pub struct Registry {
    config: Arc<RegistryConfig>,
    clients: Arc<Mutex<HashMap<String, oci_client::Client>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .finish()
    }
}

fn oci_desc(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

impl Registry {
    /// A client with these settings. Installs ring as the process's rustls provider if none is.
    pub fn new(config: RegistryConfig) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registry {
            config: Arc::new(config),
            clients: Arc::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn client(&self, r: &ImageRef) -> Result<oci_client::Client, RegistryError> {
        let host = r.resolved_registry().to_string();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&host) {
            return Ok(c.clone());
        }
        let protocol = if self.config.plain_http(r.registry()) || self.config.plain_http(&host) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let cfg = ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(self.config.connect_timeout),
            read_timeout: Some(self.config.read_timeout),
            user_agent: concat!("bolt/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = oci_client::Client::try_from(cfg).map_err(|source| RegistryError::Client {
            registry: host.clone(),
            source,
        })?;
        clients.insert(host, client.clone());
        Ok(client)
    }

    fn auth(&self, r: &ImageRef) -> oci_client::secrets::RegistryAuth {
        self.config.credentials.for_registry(r.registry()).to_oci()
    }

    /// Fetch a manifest or index by tag or digest. The digest of the bytes is checked against
    /// the reference's digest (if pinned) and the registry's `Docker-Content-Digest`.
    pub async fn manifest(&self, r: &ImageRef) -> Result<FetchedManifest, RegistryError> {
        let client = self.client(r)?;
        let (bytes, _header_digest) = client
            .pull_manifest_raw(r.as_oci(), &self.auth(r), MANIFEST_ACCEPT)
            .await
            .map_err(|source| RegistryError::Manifest {
                reference: r.to_string(),
                source,
            })?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(RegistryError::ManifestTooLarge {
                reference: r.to_string(),
                size: bytes.len(),
            });
        }
        let digest = Digest::of(&bytes);
        if let Some(want) = r.digest() {
            if want != digest {
                return Err(RegistryError::ManifestDigest {
                    reference: r.to_string(),
                    expected: want.to_string(),
                    got: digest.to_string(),
                });
            }
        }
        Ok(FetchedManifest { bytes, digest })
    }

    /// Start downloading a blob. The caller verifies digest and size as it streams.
    pub async fn blob(
        &self,
        r: &ImageRef,
        d: &Descriptor,
    ) -> Result<(BlobStream, Option<u64>), RegistryError> {
        let client = self.client(r)?;
        // Make sure the credentials are known to the client even if no manifest was fetched.
        client
            .store_auth_if_needed(r.resolved_registry(), &self.auth(r))
            .await;
        let repo = r.name();
        let digest = d.digest.to_string();
        let sized = client
            .pull_blob_stream(r.as_oci(), &oci_desc(d))
            .await
            .map_err(|source| RegistryError::Blob {
                repository: repo.clone(),
                digest: digest.clone(),
                source,
            })?;
        let len = sized.content_length;
        let stream = sized.stream.map(move |item| {
            item.map_err(|e| RegistryError::Blob {
                repository: repo.clone(),
                digest: digest.clone(),
                source: OciDistributionError::GenericError(Some(e.to_string())),
            })
        });
        Ok((Box::pin(stream), len))
    }

    /// Authenticate for a push to `r`'s repository.
    pub async fn auth_push(&self, r: &ImageRef) -> Result<(), RegistryError> {
        let client = self.client(r)?;
        client
            .auth(r.as_oci(), &self.auth(r), RegistryOperation::Push)
            .await
            .map(|_| ())
            .map_err(|source| RegistryError::Auth {
                registry: r.registry().to_string(),
                source,
            })
    }

    /// Whether the repository already holds a blob.
    pub async fn has_blob(&self, r: &ImageRef, digest: &Digest) -> Result<bool, RegistryError> {
        let client = self.client(r)?;
        client
            .blob_exists(r.as_oci(), &digest.to_string())
            .await
            .map_err(|source| RegistryError::Blob {
                repository: r.name(),
                digest: digest.to_string(),
                source,
            })
    }

    /// Upload a blob from a stream of chunks.
    pub async fn push_blob<S>(
        &self,
        r: &ImageRef,
        digest: &Digest,
        size: u64,
        data: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static,
    {
        let client = self.client(r)?;
        client
            .push_blob_stream(r.as_oci(), data, &digest.to_string(), Some(size))
            .await
            .map(|_| ())
            .map_err(|source| RegistryError::PushBlob {
                repository: r.name(),
                digest: digest.to_string(),
                source,
            })
    }

    /// Upload a manifest under `r`'s tag (or digest).
    pub async fn push_manifest(
        &self,
        r: &ImageRef,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let client = self.client(r)?;
        let ct = http_header(media_type)?;
        client
            .push_manifest_raw(r.as_oci(), bytes, ct)
            .await
            .map(|_| ())
            .map_err(|source| RegistryError::PushManifest {
                reference: r.to_string(),
                source,
            })
    }
}

fn http_header(media_type: &str) -> Result<http::HeaderValue, RegistryError> {
    http::HeaderValue::from_str(media_type)
        .map_err(|_| RegistryError::MediaType(media_type.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn https_and_http_clients_build_with_ring() {
        // Building a rustls client panics when no crypto provider is usable; ring is installed.
        let reg = Registry::new(RegistryConfig {
            insecure: vec!["registry.internal:5000".into()],
            ..Default::default()
        });
        for r in [
            "example.com/a/b:c",
            "127.0.0.1:5000/x:y",
            "registry.internal:5000/z:1",
            "busybox",
        ] {
            reg.client(&ImageRef::parse(r).unwrap()).unwrap();
        }
        assert!(reg.config().plain_http("127.0.0.1:5000"));
        assert!(reg.config().plain_http("registry.internal:5000"));
        assert!(!reg.config().plain_http("example.com"));
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
