//! The few `net.*` sysctls bridge networking depends on, read and written inside a given
//! network namespace (`/proc/sys/net` shows the namespace of the thread that opens it).

use std::io;

use super::netns::{Netns, NetnsError};

/// `net.ipv4.ip_forward`: the kernel forwards between interfaces (outbound NAT, published ports
/// from other machines and from capsules).
pub const IP_FORWARD: &str = "net/ipv4/ip_forward";

/// Why a sysctl could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// The key is not a plain relative `/proc/sys` path.
    #[error("invalid sysctl key {0:?}")]
    Key(String),
    /// Reading failed.
    #[error("read /proc/sys/{key}: {source}")]
    Read {
        /// The key.
        key: String,
        /// The error.
        source: io::Error,
    },
    /// Writing failed.
    #[error("write {value:?} to /proc/sys/{key}: {source}")]
    Write {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The error.
        source: io::Error,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

fn check_key(key: &str) -> Result<(), SysctlError> {
    let ok = !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err(SysctlError::Key(key.to_string()))
    }
}

/// `net.ipv4.conf.IFACE.route_localnet`: lets packets from 127.0.0.0/8 be routed out of
/// `iface`, which the DNAT of `127.0.0.1:PORT` to a capsule needs.
pub fn route_localnet(iface: &str) -> String {
    format!("net/ipv4/conf/{iface}/route_localnet")
}

/// Reads `/proc/sys/KEY` (trimmed) inside `ns`.
pub fn read(ns: &Netns, key: &str) -> Result<String, SysctlError> {
    check_key(key)?;
    ns.run(|| std::fs::read_to_string(format!("/proc/sys/{key}")))?
        .map(|s| s.trim().to_string())
        .map_err(|source| SysctlError::Read {
            key: key.to_string(),
            source,
        })
}

/// Writes `value` to `/proc/sys/KEY` inside `ns`.
pub fn write(ns: &Netns, key: &str, value: &str) -> Result<(), SysctlError> {
    check_key(key)?;
    ns.run(|| std::fs::write(format!("/proc/sys/{key}"), value))?
        .map_err(|source| SysctlError::Write {
            key: key.to_string(),
            value: value.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_under_proc_sys() {
        for bad in [
            "",
            "/etc/passwd",
            "net/../../etc",
            "net//x",
            "net/a b",
            "./x",
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert!(check_key(IP_FORWARD).is_ok());
        assert!(check_key(&route_localnet("bolt-0a1b")).is_ok());
    }
}
