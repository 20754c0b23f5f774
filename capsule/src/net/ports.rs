//! Published ports: `-p [IP:]HOST:CONTAINER[/tcp|udp]`, parsed with clear errors, and the rule
//! that says when two of them want the same host port.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The form a port spec takes, for error messages.
pub const PORT_SPEC_FORM: &str = "[IP:]HOST:CONTAINER[/tcp|udp]";

/// Why a port spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    /// The spec does not have the form `[IP:]HOST:CONTAINER[/proto]`.
    #[error(
        "bad port spec {0:?}: expected {PORT_SPEC_FORM}, such as 8080:80 or 127.0.0.1:8080:80/tcp"
    )]
    Form(String),
    /// The host address is not an IPv4 address.
    #[error("bad port spec {spec:?}: {addr:?} is not an IPv4 address")]
    Address {
        /// The whole spec.
        spec: String,
        /// The address part.
        addr: String,
    },
    /// A port is not a number.
    #[error("bad port spec {spec:?}: {port:?} is not a port number")]
    NotANumber {
        /// The whole spec.
        spec: String,
        /// The port part.
        port: String,
    },
    /// A port is 0.
    #[error("bad port spec {0:?}: port 0 cannot be published")]
    Zero(String),
    /// A port is above 65535.
    #[error("bad port spec {spec:?}: port {port} is above 65535")]
    TooLarge {
        /// The whole spec.
        spec: String,
        /// The port part.
        port: String,
    },
    /// The protocol is neither `tcp` nor `udp`.
    #[error("bad port spec {spec:?}: protocol {proto:?} is neither tcp nor udp")]
    Protocol {
        /// The whole spec.
        spec: String,
        /// The protocol part.
        proto: String,
    },
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Proto {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`, as nft and docker write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One published port: traffic to `host_ip:host_port` (every local address when `host_ip` is
/// `None`) is forwarded to the capsule's `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// The host address to listen on; `None` is every address of the host (`0.0.0.0`).
    pub host_ip: Option<Ipv4Addr>,
    /// The host port.
    pub host_port: u16,
    /// The port inside the capsule.
    pub container_port: u16,
    /// The protocol.
    pub proto: Proto,
}

impl PortSpec {
    /// Whether `self` and `other` claim the same host port: same protocol, same port, and host
    /// addresses that meet (`None`, every address, meets any address).
    pub fn conflicts(&self, other: &PortSpec) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The host address to bind to check the port is free (`0.0.0.0` for every address).
    pub fn bind_ip(&self) -> Ipv4Addr {
        self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

fn port(spec: &str, s: &str) -> Result<u16, PortSpecError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortSpecError::NotANumber {
            spec: spec.to_string(),
            port: s.to_string(),
        });
    }
    let digits = s.trim_start_matches('0');
    // More than five significant digits is above 65535 whatever they are.
    let v: u32 = if digits.len() > 5 {
        u32::MAX
    } else {
        digits.parse().unwrap_or(0)
    };
    match v {
        0 => Err(PortSpecError::Zero(spec.to_string())),
        v if v > u32::from(u16::MAX) => Err(PortSpecError::TooLarge {
            spec: spec.to_string(),
            port: s.to_string(),
        }),
        v => u16::try_from(v).map_err(|_| PortSpecError::TooLarge {
            spec: spec.to_string(),
            port: s.to_string(),
        }),
    }
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    /// Parses `[IP:]HOST:CONTAINER[/tcp|udp]`. Protocols are case-insensitive.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (ports, proto) = match spec.split_once('/') {
            Some((ports, proto)) => {
                let p = match proto.to_ascii_lowercase().as_str() {
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    _ => {
                        return Err(PortSpecError::Protocol {
                            spec: spec.to_string(),
                            proto: proto.to_string(),
                        })
                    }
                };
                (ports, p)
            }
            None => (spec, Proto::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host, container) = match parts.as_slice() {
            [host, container] => (None, *host, *container),
            [ip, host, container] => {
                let addr = ip.parse::<Ipv4Addr>().map_err(|_| PortSpecError::Address {
                    spec: spec.to_string(),
                    addr: ip.to_string(),
                })?;
                (Some(addr), *host, *container)
            }
            _ => return Err(PortSpecError::Form(spec.to_string())),
        };
        Ok(PortSpec {
            // 0.0.0.0 means every address, as having no address does.
            host_ip: host_ip.filter(|a| !a.is_unspecified()),
            host_port: port(spec, host)?,
            container_port: port(spec, container)?,
            proto,
        })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.proto
        )
    }
}

/// Parses every spec, stopping at the first bad one.
pub fn parse_all<S: AsRef<str>>(specs: &[S]) -> Result<Vec<PortSpec>, PortSpecError> {
    specs.iter().map(|s| s.as_ref().parse()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> PortSpec {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_docker_forms() {
        assert_eq!(
            p("8080:80"),
            PortSpec {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(
            p("127.0.0.1:8080:80/udp"),
            PortSpec {
                host_ip: Some(Ipv4Addr::LOCALHOST),
                host_port: 8080,
                container_port: 80,
                proto: Proto::Udp
            }
        );
        assert_eq!(p("53:53/UDP").proto, Proto::Udp);
        assert_eq!(p("0.0.0.0:1:65535/tcp").host_ip, None);
        assert_eq!(p("65535:1").host_port, 65535);
        assert_eq!(p("008080:080").host_port, 8080);
    }

    #[test]
    fn refuses_bad_specs_clearly() {
        let cases: &[(&str, &str)] = &[
            ("", "expected [IP:]HOST:CONTAINER"),
            ("80", "expected [IP:]HOST:CONTAINER"),
            ("1:2:3:4", "expected [IP:]HOST:CONTAINER"),
            ("localhost:80:80", "\"localhost\" is not an IPv4 address"),
            ("::1:80:80", "expected [IP:]HOST:CONTAINER"),
            ("abc:80", "\"abc\" is not a port number"),
            ("80:", "\"\" is not a port number"),
            ("-1:80", "\"-1\" is not a port number"),
            ("+80:80", "\"+80\" is not a port number"),
            ("0:80", "port 0 cannot be published"),
            ("80:0", "port 0 cannot be published"),
            ("65536:80", "port 65536 is above 65535"),
            ("80:99999999999999999999", "is above 65535"),
            ("80:80/sctp", "protocol \"sctp\" is neither tcp nor udp"),
            ("80:80/", "protocol \"\" is neither tcp nor udp"),
            ("80:80/tcp/udp", "protocol \"tcp/udp\""),
        ];
        for (spec, want) in cases {
            let e = spec.parse::<PortSpec>().unwrap_err();
            assert!(
                e.to_string().contains(want),
                "{spec:?}: {e} (wanted {want:?})"
            );
        }
    }

    #[test]
    fn conflicts_need_same_proto_port_and_meeting_addresses() {
        assert!(p("8080:80").conflicts(&p("8080:81")));
        assert!(p("8080:80").conflicts(&p("127.0.0.1:8080:80")));
        assert!(p("127.0.0.1:8080:80").conflicts(&p("8080:80")));
        assert!(!p("127.0.0.1:8080:80").conflicts(&p("127.0.0.2:8080:80")));
        assert!(!p("8080:80").conflicts(&p("8080:80/udp")));
        assert!(!p("8080:80").conflicts(&p("8081:80")));
    }

    #[test]
    fn parse_all_stops_at_the_first_bad_spec() {
        assert_eq!(parse_all(&["1:2", "3:4/udp"]).unwrap().len(), 2);
        assert!(matches!(
            parse_all(&["1:2", "x", "0:1"]),
            Err(PortSpecError::Form(s)) if s == "x"
        ));
    }

    proptest! {
        #[test]
        fn display_parses_back(
            ip in proptest::option::of(any::<u32>().prop_filter("not 0.0.0.0", |v| *v != 0)),
            host in 1u16..,
            container in 1u16..,
            udp in any::<bool>(),
        ) {
            let spec = PortSpec {
                host_ip: ip.map(Ipv4Addr::from),
                host_port: host,
                container_port: container,
                proto: if udp { Proto::Udp } else { Proto::Tcp },
            };
            prop_assert_eq!(spec.to_string().parse::<PortSpec>().unwrap(), spec);
        }

        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = s.parse::<PortSpec>();
        }
    }
}
