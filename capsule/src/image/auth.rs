//! Registry credentials from a docker-style `config.json` (`auths.HOST.auth` = base64
//! `user:password`, or `username`/`password`, or `registrytoken`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("read credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {path} is not valid json: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("credentials for {host} in {path}: `auth` is not base64 of user:password")]
    BadAuth { host: String, path: PathBuf },
}

/// What to present to one registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credential {
    /// No credentials: anonymous (a bearer token may still be fetched anonymously).
    #[default]
    Anonymous,
    /// User and password (HTTP basic, or exchanged for a bearer token).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A ready bearer token.
    Bearer(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => write!(f, "Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

impl Credential {
    /// As oci-client wants it.
    pub fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match self {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credential::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// Credentials by registry host.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_host: BTreeMap<String, Credential>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The docker default: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// Normalize an `auths` key or registry name to a bare host[:port]; Docker Hub aliases map to
/// `docker.io`.
pub fn normalize_host(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or_default().to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

impl Credentials {
    /// No credentials at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Load a docker-style config file. A missing file means no credentials.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::none()),
            Err(source) => {
                return Err(AuthError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(&bytes, path)
    }

    /// Parse config.json bytes (`path` is for messages).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, AuthError> {
        let file: ConfigFile = serde_json::from_slice(bytes).map_err(|e| AuthError::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in file.auths {
            let host = normalize_host(&key);
            let cred = if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
                Credential::Bearer(token)
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let bad = || AuthError::BadAuth {
                    host: host.clone(),
                    path: path.to_path_buf(),
                };
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| bad())?;
                let text = String::from_utf8(raw).map_err(|_| bad())?;
                let (u, p) = text.split_once(':').ok_or_else(bad)?;
                Credential::Basic {
                    username: u.to_string(),
                    password: p.to_string(),
                }
            } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
                Credential::Basic {
                    username: u,
                    password: p,
                }
            } else {
                continue;
            };
            by_host.insert(host, cred);
        }
        Ok(Credentials { by_host })
    }

    /// Add or replace the credential for a registry.
    pub fn insert(&mut self, registry: &str, cred: Credential) {
        self.by_host.insert(normalize_host(registry), cred);
    }

    /// The credential for a registry (as written in a reference), anonymous if none.
    pub fn for_registry(&self, registry: &str) -> Credential {
        self.by_host
            .get(&normalize_host(registry))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_docker_config() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000":{"username":"a","password":"b"},
            "tok.example":{"registrytoken":"T"},
            "empty.example":{}
        }}"#;
        let c = Credentials::parse(json, Path::new("x")).unwrap();
        assert_eq!(
            c.for_registry("docker.io"),
            Credential::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            c.for_registry("127.0.0.1:5000"),
            Credential::Basic {
                username: "a".into(),
                password: "b".into()
            }
        );
        assert_eq!(
            c.for_registry("tok.example"),
            Credential::Bearer("T".into())
        );
        assert_eq!(c.for_registry("empty.example"), Credential::Anonymous);
        assert_eq!(c.for_registry("other"), Credential::Anonymous);
        assert!(!format!("{:?}", c.for_registry("docker.io")).contains("pa:ss"));
    }

    #[test]
    fn refuses_bad_auth() {
        let json = br#"{"auths":{"h":{"auth":"!!!"}}}"#;
        assert!(matches!(
            Credentials::parse(json, Path::new("x")),
            Err(AuthError::BadAuth { .. })
        ));
        let json = br#"{"auths":{"h":{"auth":"bm9jb2xvbg=="}}}"#; // "nocolon"
        assert!(matches!(
            Credentials::parse(json, Path::new("x")),
            Err(AuthError::BadAuth { .. })
        ));
        assert!(
            Credentials::load(Path::new("/nonexistent/bolt/config.json")).unwrap()
                == Credentials::none()
        );
    }
}
