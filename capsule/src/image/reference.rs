//! Image references, docker style: `busybox` is `docker.io/library/busybox:latest`,
//! `127.0.0.1:5000/a/b:t` names a registry, `name@sha256:...` pins a digest.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use oci_client::Reference;

use super::digest::{Digest, DigestError};

/// Why a reference was refused.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    #[error("invalid image reference {input:?}: {reason}")]
    Parse { input: String, reason: String },
    #[error("invalid digest in image reference {input:?}: {source}")]
    Digest { input: String, source: DigestError },
}

/// A parsed, normalized image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    inner: Reference,
}

impl ImageRef {
    /// Parse and normalize a docker-style reference. A missing tag (and no digest) means `latest`.
    pub fn parse(s: &str) -> Result<Self, RefError> {
        let trimmed = s.trim();
        // Reference parsing rejects these anyway, but be explicit: no whitespace or controls.
        if trimmed.is_empty() || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RefError::Parse {
                input: s.to_string(),
                reason: "empty or has whitespace".into(),
            });
        }
        let inner: Reference =
            trimmed
                .parse()
                .map_err(|e: oci_client::ParseError| RefError::Parse {
                    input: s.to_string(),
                    reason: e.to_string(),
                })?;
        if inner.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(RefError::Parse {
                input: s.to_string(),
                reason: "repository name must be lowercase".into(),
            });
        }
        if let Some(d) = inner.digest() {
            Digest::parse(d).map_err(|source| RefError::Digest {
                input: s.to_string(),
                source,
            })?;
        }
        Ok(ImageRef { inner })
    }

    /// The registry host (with port), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The host actually contacted (`index.docker.io` for Docker Hub).
    pub fn resolved_registry(&self) -> &str {
        self.inner.resolve_registry()
    }

    /// The repository path, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The pinned digest, if any.
    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| Digest::parse(d).ok())
    }

    /// The same repository pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: &Digest) -> ImageRef {
        ImageRef {
            inner: self.inner.clone_with_digest(digest.to_string()),
        }
    }

    /// The repository without tag or digest: `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// Whether the registry is on loopback (`localhost`, 127.0.0.0/8, `::1`), where plain HTTP is
    /// used as docker does.
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(self.registry())
    }

    /// The oci-client reference.
    pub fn as_oci(&self) -> &Reference {
        &self.inner
    }
}

/// Whether `host[:port]` names a loopback registry.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = strip_port(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.octets()[0] == 127,
        Ok(IpAddr::V6(v6)) => v6 == Ipv6Addr::LOCALHOST,
        Err(_) => false,
    }
}

fn strip_port(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        // [v6]:port
        return match rest.find(']') {
            Some(i) => &registry[..i + 2],
            None => registry,
        };
    }
    match registry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.whole())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({})", self.inner.whole())
    }
}

impl FromStr for ImageRef {
    type Err = RefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn normalizes_docker_hub() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.resolved_registry(), "index.docker.io");
        assert!(!r.is_loopback_registry());
        let r = ImageRef::parse("someone/thing:v1").unwrap();
        assert_eq!(r.to_string(), "docker.io/someone/thing:v1");
    }

    #[test]
    fn local_registry_and_digest() {
        let r = ImageRef::parse("127.0.0.1:5000/a/b:t").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("t"));
        assert!(r.is_loopback_registry());
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = ImageRef::parse(&format!("localhost:5000/x@{d}")).unwrap();
        assert_eq!(r.digest().unwrap().to_string(), d);
        assert!(r.is_loopback_registry());
        assert_eq!(r.to_string(), format!("localhost:5000/x@{d}"));
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("127.3.4.5:80"));
        assert!(is_loopback_host("[::1]:5000"));
        assert!(is_loopback_host("localhost"));
        assert!(!is_loopback_host("128.0.0.1:5000"));
        assert!(!is_loopback_host("example.com"));
        assert!(!is_loopback_host("localhost.example.com:5000"));
    }

    #[test]
    fn refuses_garbage() {
        assert!(ImageRef::parse("").is_err());
        assert!(ImageRef::parse("UPPER/case").is_err());
        assert!(ImageRef::parse("a b").is_err());
        assert!(ImageRef::parse("x@sha256:abc").is_err());
        assert!(ImageRef::parse("x@md5:abc").is_err());
    }
}
