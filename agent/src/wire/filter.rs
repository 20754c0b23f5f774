//! Event filters of `GET /v1/events` and the event stream: `origin` (a node id hex prefix of at
//! least [`MIN_ORIGIN_PREFIX`] digits, or a node name the server resolves to ids) and `kind`
//! (an exact kind such as `capsule.started`, or a prefix ending in `.` or `.*` such as
//! `capsule.` or `cluster.*`). Parsing and matching are pure; resolving a name to node ids is
//! the server's part (it knows the state).

use bolt_events::NodeId;

use crate::wire::EventView;

/// The fewest hex digits an origin prefix may have.
pub const MIN_ORIGIN_PREFIX: usize = 4;

/// The response header of `GET /v1/events` with the cursor the scan reached: every event up to
/// it was looked at, so a client continues after it (it is the last returned event's cursor
/// when the page is full).
pub const HEADER_CURSOR: &str = "bolt-cursor";
/// The response header of `GET /v1/events` with the log head when the page was read: once the
/// reached cursor is at the head, the client has seen everything.
pub const HEADER_HEAD: &str = "bolt-head";

/// A filter value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("kind must not be empty")]
    EmptyKind,
    #[error("kind {0:?}: a wildcard is only allowed as a trailing `.*` (like `capsule.*`)")]
    Wildcard(String),
    #[error("origin must not be empty")]
    EmptyOrigin,
    #[error(
        "origin {0:?} is neither a node id prefix (at least 4 hex digits) nor the name of a \
         known node"
    )]
    Origin(String),
}

/// Which kinds pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindFilter {
    /// Exactly this kind.
    Exact(String),
    /// Kinds starting with this prefix (which ends in `.`).
    Prefix(String),
}

impl KindFilter {
    /// Parse `capsule.started` (exact), `capsule.` or `capsule.*` (prefix).
    pub fn parse(s: &str) -> Result<KindFilter, FilterError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(FilterError::EmptyKind);
        }
        let prefix = s.strip_suffix('*');
        let base = prefix.unwrap_or(s);
        if base.contains('*') || (prefix.is_some() && !base.ends_with('.')) {
            return Err(FilterError::Wildcard(s.to_string()));
        }
        if base.is_empty() || base == "." {
            return Err(FilterError::EmptyKind);
        }
        Ok(if base.ends_with('.') {
            KindFilter::Prefix(base.to_string())
        } else {
            KindFilter::Exact(base.to_string())
        })
    }

    /// Whether `kind` passes.
    pub fn matches(&self, kind: &str) -> bool {
        match self {
            KindFilter::Exact(k) => kind == k,
            KindFilter::Prefix(p) => kind.starts_with(p.as_str()),
        }
    }
}

/// Which origins pass: those whose hex id starts with `prefix`, and the `nodes` a name
/// resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginFilter {
    /// Lowercase hex digits the id starts with, when the value was a valid prefix.
    pub prefix: Option<String>,
    /// The nodes the value names.
    pub nodes: Vec<NodeId>,
}

impl OriginFilter {
    /// `value` as a hex prefix and as a name, resolved with `named` (the ids of the nodes
    /// called `value`). Refused when it is neither.
    pub fn parse(value: &str, named: Vec<NodeId>) -> Result<OriginFilter, FilterError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(FilterError::EmptyOrigin);
        }
        let prefix = (value.len() >= MIN_ORIGIN_PREFIX
            && value.len() <= 64
            && value.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| value.to_ascii_lowercase());
        if prefix.is_none() && named.is_empty() {
            return Err(FilterError::Origin(value.to_string()));
        }
        Ok(OriginFilter {
            prefix,
            nodes: named,
        })
    }

    /// Whether `origin` passes.
    pub fn matches(&self, origin: &NodeId) -> bool {
        self.nodes.contains(origin)
            || self
                .prefix
                .as_deref()
                .is_some_and(|p| hex_starts_with(origin, p))
    }
}

/// Whether the lowercase hex of `id` starts with the lowercase hex digits `prefix`.
fn hex_starts_with(id: &NodeId, prefix: &str) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits =
        id.0.iter()
            .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
    prefix.len() <= 64 && prefix.bytes().zip(digits).all(|(p, d)| p == d)
}

/// The filter of one request: both parts optional; an event passes when it passes each given
/// part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these origins.
    pub origin: Option<OriginFilter>,
    /// Only these kinds.
    pub kind: Option<KindFilter>,
}

impl EventFilter {
    /// Whether the filter lets everything through.
    pub fn is_empty(&self) -> bool {
        self.origin.is_none() && self.kind.is_none()
    }

    /// Whether an event of `origin` and `kind` passes (checked before an event is turned into
    /// a view).
    pub fn matches_parts(&self, origin: &NodeId, kind: &str) -> bool {
        self.origin.as_ref().is_none_or(|o| o.matches(origin))
            && self.kind.as_ref().is_none_or(|k| k.matches(kind))
    }
}

/// Whether `ev` passes `filter`.
pub fn matches(ev: &EventView, filter: &EventFilter) -> bool {
    filter.matches_parts(&ev.origin, &ev.kind)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bolt_events::Hash;

    use super::*;

    fn id(byte: u8) -> NodeId {
        NodeId([byte; 32])
    }

    fn ev(origin: NodeId, kind: &str) -> EventView {
        EventView {
            cursor: 1,
            origin,
            seq: 1,
            hlc: 0,
            schema: 1,
            kind: kind.to_string(),
            hash: Hash::ZERO,
            prev: Hash::ZERO,
            payload: serde_json::Value::Null,
        }
    }

    #[test]
    fn kinds_parse_as_exact_or_prefix() {
        assert_eq!(
            KindFilter::parse("capsule.started").unwrap(),
            KindFilter::Exact("capsule.started".into())
        );
        for p in ["capsule.", "capsule.*", " capsule.* "] {
            assert_eq!(
                KindFilter::parse(p).unwrap(),
                KindFilter::Prefix("capsule.".into()),
                "{p}"
            );
        }
        for bad in ["", " ", ".", ".*"] {
            assert_eq!(
                KindFilter::parse(bad),
                Err(FilterError::EmptyKind),
                "{bad:?}"
            );
        }
        for bad in ["*", "capsule*", "cap*sule.started", "capsule.*.x", "**"] {
            assert!(
                matches!(KindFilter::parse(bad), Err(FilterError::Wildcard(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn kind_filters_match_exactly_or_by_prefix() {
        let exact = KindFilter::parse("capsule.started").unwrap();
        assert!(exact.matches("capsule.started"));
        assert!(!exact.matches("capsule.started.again"));
        assert!(!exact.matches("capsule.stopped"));
        let prefix = KindFilter::parse("cluster.*").unwrap();
        assert!(prefix.matches("cluster.created"));
        assert!(prefix.matches("cluster.member.down"));
        assert!(!prefix.matches("clusters.created"));
        assert!(!prefix.matches("cluster"));
    }

    #[test]
    fn origins_parse_as_hex_prefixes_or_names() {
        let a = id(0xab);
        let f = OriginFilter::parse("ABAB", Vec::new()).unwrap();
        assert_eq!(f.prefix.as_deref(), Some("abab"));
        assert!(f.matches(&a));
        assert!(!f.matches(&id(0xac)));
        assert!(OriginFilter::parse(&a.to_string(), Vec::new())
            .unwrap()
            .matches(&a));
        // Too short, not hex, too long: only a name makes them valid.
        for bad in ["aba", "node-a", &"a".repeat(65)] {
            assert_eq!(
                OriginFilter::parse(bad, Vec::new()),
                Err(FilterError::Origin(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(
            OriginFilter::parse(" ", Vec::new()),
            Err(FilterError::EmptyOrigin)
        );
        let named = OriginFilter::parse("node-a", vec![a]).unwrap();
        assert_eq!(named.prefix, None);
        assert!(named.matches(&a));
        assert!(!named.matches(&id(0xab ^ 1)));
        // A name that is also a hex prefix matches both ways.
        let both = OriginFilter::parse("cafe", vec![a]).unwrap();
        let mut cafe = id(0);
        cafe.0[..2].copy_from_slice(&[0xca, 0xfe]);
        assert!(both.matches(&a));
        assert!(both.matches(&cafe));
        assert!(!both.matches(&id(0xca)));
    }

    #[test]
    fn an_event_passes_every_given_part() {
        let (a, b) = (id(0x11), id(0x22));
        let all = EventFilter::default();
        assert!(all.is_empty());
        assert!(matches(&ev(a, "node.started"), &all));
        let f = EventFilter {
            origin: Some(OriginFilter::parse("1111", Vec::new()).unwrap()),
            kind: Some(KindFilter::parse("capsule.").unwrap()),
        };
        assert!(!f.is_empty());
        assert!(matches(&ev(a, "capsule.started"), &f));
        assert!(!matches(&ev(a, "node.started"), &f));
        assert!(!matches(&ev(b, "capsule.started"), &f));
        let origin_only = EventFilter {
            origin: Some(OriginFilter::parse("b", vec![b]).unwrap()),
            kind: None,
        };
        assert!(matches(&ev(b, "node.started"), &origin_only));
        assert!(!matches(&ev(a, "node.started"), &origin_only));
    }
}
