//! The registry client: OCI Distribution v2 on oci-client, with bearer-token and basic auth,
//! plain HTTP for loopback and insecure registries, HTTPS (rustls on ring) elsewhere.
//! Manifests are fetched with a direct request (oci-client's auth, reqwest's body stream) so
//! their size cap holds while the body streams in: oci-client reads a manifest whole first.

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
    ManifestTooLarge { reference: String, size: u64 },
    #[error("manifest {reference}: more than {MAX_MANIFEST_BYTES} bytes, over the limit (stopped reading)")]
    ManifestTooLong { reference: String },
    #[error("fetch manifest {reference}: {source}")]
    ManifestRequest {
        reference: String,
        source: reqwest::Error,
    },
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

/// The clients of one registry host: oci-client (auth, blobs, pushes) and a plain HTTP client
/// with the same settings for manifests.
#[derive(Clone)]
struct HostClients {
    oci: oci_client::Client,
    http: reqwest::Client,
    scheme: &'static str,
}

/// One client per registry host, with credentials applied.
#[derive(Clone)]
pub struct Registry {
    config: Arc<RegistryConfig>,
    clients: Arc<Mutex<HashMap<String, HostClients>>>,
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
        self.clients_of(r).map(|c| c.oci)
    }

    fn clients_of(&self, r: &ImageRef) -> Result<HostClients, RegistryError> {
        let host = r.resolved_registry().to_string();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&host) {
            return Ok(c.clone());
        }
        let plain = self.config.plain_http(r.registry()) || self.config.plain_http(&host);
        let (protocol, scheme) = if plain {
            (ClientProtocol::Http, "http")
        } else {
            (ClientProtocol::Https, "https")
        };
        let cfg = ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(self.config.connect_timeout),
            read_timeout: Some(self.config.read_timeout),
            user_agent: concat!("bolt/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let oci = oci_client::Client::try_from(cfg).map_err(|source| RegistryError::Client {
            registry: host.clone(),
            source,
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(self.config.connect_timeout)
            .read_timeout(self.config.read_timeout)
            .user_agent(concat!("bolt/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Client {
                registry: host.clone(),
                source: OciDistributionError::RequestError(e),
            })?;
        let c = HostClients { oci, http, scheme };
        clients.insert(host, c.clone());
        Ok(c)
    }

    fn auth(&self, r: &ImageRef) -> oci_client::secrets::RegistryAuth {
        self.config.credentials.for_registry(r.registry()).to_oci()
    }

    /// Fetch a manifest or index by tag or digest. The body is read as it streams and given up
    /// past [`MAX_MANIFEST_BYTES`] (a declared length over it is refused before reading). The
    /// digest of the bytes is checked against the reference's digest (if pinned) and the
    /// registry's `Docker-Content-Digest` (if it sends a sha256 one).
    pub async fn manifest(&self, r: &ImageRef) -> Result<FetchedManifest, RegistryError> {
        let reference = r.to_string();
        let c = self.clients_of(r)?;
        let auth = self.auth(r);
        let token = c
            .oci
            .auth(r.as_oci(), &auth, RegistryOperation::Pull)
            .await
            .map_err(|source| RegistryError::Auth {
                registry: r.registry().to_string(),
                source,
            })?;
        let url = manifest_url(c.scheme, r.as_oci());
        let mut req = c
            .http
            .get(&url)
            .header(http::header::ACCEPT, MANIFEST_ACCEPT.join(", "));
        req = match (token, &auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, oci_client::secrets::RegistryAuth::Basic(user, pass)) => {
                req.basic_auth(user, Some(pass))
            }
            (None, _) => req,
        };
        let request_err = |source| RegistryError::ManifestRequest {
            reference: reference.clone(),
            source,
        };
        let mut res = req.send().await.map_err(request_err)?;
        let status = res.status();
        if status != http::StatusCode::OK {
            let body = read_capped(&mut res, ERROR_BODY_BYTES)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            return Err(RegistryError::Manifest {
                reference,
                source: status_error(status, &body, url),
            });
        }
        if let Some(size) = res.content_length().filter(|n| *n > MAX_MANIFEST_BYTES) {
            return Err(RegistryError::ManifestTooLarge { reference, size });
        }
        let header_digest = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes = match read_capped(&mut res, MAX_MANIFEST_BYTES as usize).await {
            Ok(Some(b)) => Bytes::from(b),
            Ok(None) => return Err(RegistryError::ManifestTooLong { reference }),
            Err(e) => return Err(request_err(e)),
        };
        let digest = Digest::of(&bytes);
        for want in [r.digest(), header_digest].into_iter().flatten() {
            if want.algorithm() == digest.algorithm() && want != digest {
                return Err(RegistryError::ManifestDigest {
                    reference,
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

/// How much of an error response's body is kept for the message.
const ERROR_BODY_BYTES: usize = 64 << 10;

/// `/v2/<repository>/manifests/<digest or tag>` on the reference's registry, as oci-client
/// builds it.
fn manifest_url(scheme: &str, r: &oci_client::Reference) -> String {
    let at = match r.digest() {
        Some(d) => d,
        None => r.tag().unwrap_or("latest"),
    };
    let ns = r
        .namespace()
        .map(|ns| format!("?ns={ns}"))
        .unwrap_or_default();
    format!(
        "{scheme}://{}/v2/{}/manifests/{at}{ns}",
        r.resolve_registry(),
        r.repository()
    )
}

/// The body, read chunk by chunk as it arrives; `None` as soon as it grows past `cap` (the rest
/// is never read: dropping the response closes the connection).
async fn read_capped(
    res: &mut reqwest::Response,
    cap: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        if out.len() + chunk.len() > cap {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

/// A registry's refusal as oci-client words it: its OCI error envelope when the body is one.
fn status_error(status: http::StatusCode, body: &[u8], url: String) -> OciDistributionError {
    if status == http::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError { url };
    }
    match serde_json::from_slice::<oci_client::errors::OciEnvelope>(body) {
        Ok(envelope) if status.is_client_error() => {
            OciDistributionError::RegistryError { envelope, url }
        }
        _ => OciDistributionError::ServerError {
            code: status.as_u16(),
            url,
            message: String::from_utf8_lossy(body).into_owned(),
        },
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

    /// A registry on 127.0.0.1 that answers `/v2/` and streams an endless manifest (chunked,
    /// stopping after `limit` bytes or when the client goes away). Returns its address and the
    /// number of manifest bytes it managed to send.
    fn endless_registry(limit: usize) -> (String, std::thread::JoinHandle<usize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            // One request per connection (`/v2/` is answered with `connection: close`).
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                if !request_line.contains("/manifests/") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    );
                    continue;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ntransfer-encoding: chunked\r\n\r\n";
                conn.write_all(head.as_bytes()).unwrap();
                let chunk = [b' '; 64 * 1024];
                let mut sent = 0;
                while sent < limit {
                    let framed =
                        [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                    if conn.write_all(&framed).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                return sent;
            }
            0
        });
        (addr, server)
    }

    #[test]
    fn an_endless_manifest_is_cut_off_at_the_cap() {
        let limit = 256 << 20;
        let (addr, server) = endless_registry(limit);
        let reg = Registry::new(RegistryConfig::default());
        let r = ImageRef::parse(&format!("{addr}/endless/manifest:latest")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(reg.manifest(&r)).unwrap_err();
        assert!(
            matches!(err, RegistryError::ManifestTooLong { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("over the limit"), "{err}");
        drop(reg);
        drop(rt);
        let sent = server.join().unwrap();
        // Read no further than the cap (plus what the socket buffers hold).
        assert!(
            sent < MAX_MANIFEST_BYTES as usize + (32 << 20),
            "the registry sent {sent} bytes before the client stopped reading"
        );
    }
}
