//! `-v SRC:DST[:ro|rw]` and `--tmpfs DST[:OPTIONS]` specs (pure parsing), and their runtime
//! [`Mount`]s.
//!
//! - `-v NAME:/dst` is a named volume (created when missing), `-v /host/path:/dst` a bind of
//!   a host path, `-v /dst` an anonymous volume (a fresh volume with a generated name). Options
//!   after a second `:` are `ro` or `rw`, comma separated.
//! - `--tmpfs /dst[:size=64m,mode=1777,uid=N,gid=N,ro,rw,exec,noexec]`: always `nosuid,nodev`,
//!   `noexec` unless `exec` (docker's defaults).
//!
//! Every error names the spec and the part that is wrong.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::runtime::{Mount, TmpfsOptions};

/// A bad `-v` or `--tmpfs` spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountSpecError {
    /// Nothing given.
    #[error("empty {kind} spec")]
    Empty {
        /// `volume` or `tmpfs`.
        kind: &'static str,
    },
    /// More `:`-separated parts than `SRC:DST:OPTIONS`.
    #[error("volume spec {spec:?}: too many ':' (expected SRC:DST[:ro|rw])")]
    TooManyParts {
        /// The spec.
        spec: String,
    },
    /// An empty source before the `:`.
    #[error("volume spec {spec:?}: empty source before ':'")]
    EmptySource {
        /// The spec.
        spec: String,
    },
    /// The source is neither an absolute path nor a valid volume name.
    #[error("volume spec {spec:?}: source {source_part:?} is neither an absolute host path nor a valid volume name ([A-Za-z0-9][A-Za-z0-9_.-]+, at most 255)")]
    BadSource {
        /// The spec.
        spec: String,
        /// The source part.
        source_part: String,
    },
    /// The container path is not usable.
    #[error("{kind} spec {spec:?}: container path {target:?} {reason}")]
    BadTarget {
        /// `volume` or `tmpfs`.
        kind: &'static str,
        /// The spec.
        spec: String,
        /// The container path.
        target: String,
        /// Why.
        reason: &'static str,
    },
    /// An option is not known.
    #[error("{kind} spec {spec:?}: unknown option {option:?} (expected {expected})")]
    UnknownOption {
        /// `volume` or `tmpfs`.
        kind: &'static str,
        /// The spec.
        spec: String,
        /// The option.
        option: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// Two options contradict each other (`ro,rw`).
    #[error("{kind} spec {spec:?}: conflicting options {a:?} and {b:?}")]
    Conflict {
        /// `volume` or `tmpfs`.
        kind: &'static str,
        /// The spec.
        spec: String,
        /// One option.
        a: String,
        /// The other.
        b: String,
    },
    /// An option's value does not parse.
    #[error("tmpfs spec {spec:?}: bad {option} value {value:?} ({expected})")]
    BadValue {
        /// The spec.
        spec: String,
        /// The option.
        option: &'static str,
        /// The value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// Two mounts (volumes or tmpfs) on one container path.
    #[error("two mounts on container path {target:?}: {first:?} and {second:?}")]
    Duplicate {
        /// The container path.
        target: String,
        /// The first spec.
        first: String,
        /// The second spec.
        second: String,
    },
}

/// Where a `-v` mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A named volume (created on first use).
    Named(String),
    /// A host file or directory, bound as is.
    Host(PathBuf),
    /// A fresh volume with a generated name (`-v /dst`).
    Anonymous,
}

/// A parsed `-v` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The content.
    pub source: VolumeSource,
    /// The container path, normalized (`/a//b/` → `/a/b`).
    pub target: String,
    /// Read-only (`:ro`).
    pub readonly: bool,
}

/// A parsed `--tmpfs` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsSpec {
    /// The container path, normalized.
    pub target: String,
    /// Size, mode, owner and flags.
    pub options: TmpfsOptions,
}

/// Checks a volume name: docker's rule `[A-Za-z0-9][A-Za-z0-9_.-]+`, at most 255 bytes (one
/// directory name).
pub fn valid_volume_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= 255
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Normalizes and checks a container path; `Err` carries the reason.
fn container_path(p: &str) -> Result<String, &'static str> {
    if !p.starts_with('/') {
        return Err("must be absolute");
    }
    if p.contains('\0') {
        return Err("contains a NUL byte");
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() {
        return Err("cannot be /");
    }
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err("must not contain '.' or '..'");
    }
    if parts.first() == Some(&"proc") {
        return Err("is under /proc");
    }
    Ok(parts.iter().fold(String::new(), |mut acc, c| {
        acc.push('/');
        acc.push_str(c);
        acc
    }))
}

impl VolumeSpec {
    /// Parses `SRC:DST[:OPTIONS]` or `DST`.
    pub fn parse(spec: &str) -> Result<Self, MountSpecError> {
        if spec.is_empty() {
            return Err(MountSpecError::Empty { kind: "volume" });
        }
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, opts) = match parts.as_slice() {
            [dst] => (None, *dst, None),
            [src, dst] => (Some(*src), *dst, None),
            [src, dst, opts] => (Some(*src), *dst, Some(*opts)),
            _ => {
                return Err(MountSpecError::TooManyParts {
                    spec: spec.to_owned(),
                })
            }
        };
        let target = container_path(dst).map_err(|reason| MountSpecError::BadTarget {
            kind: "volume",
            spec: spec.to_owned(),
            target: dst.to_owned(),
            reason,
        })?;
        let source = match src {
            None => VolumeSource::Anonymous,
            Some("") => {
                return Err(MountSpecError::EmptySource {
                    spec: spec.to_owned(),
                })
            }
            Some(s) if s.starts_with('/') => {
                if s.contains('\0') || s.split('/').any(|c| c == "..") {
                    return Err(MountSpecError::BadSource {
                        spec: spec.to_owned(),
                        source_part: s.to_owned(),
                    });
                }
                VolumeSource::Host(PathBuf::from(s))
            }
            Some(s) if valid_volume_name(s) => VolumeSource::Named(s.to_owned()),
            Some(s) => {
                return Err(MountSpecError::BadSource {
                    spec: spec.to_owned(),
                    source_part: s.to_owned(),
                })
            }
        };
        let mut readonly = None::<(bool, &str)>;
        for opt in opts.into_iter().flat_map(|o| o.split(',')) {
            let ro = match opt {
                "ro" => true,
                "rw" => false,
                other => {
                    return Err(MountSpecError::UnknownOption {
                        kind: "volume",
                        spec: spec.to_owned(),
                        option: other.to_owned(),
                        expected: "ro or rw",
                    })
                }
            };
            if let Some((prev, prev_opt)) = readonly {
                if prev != ro {
                    return Err(MountSpecError::Conflict {
                        kind: "volume",
                        spec: spec.to_owned(),
                        a: prev_opt.to_owned(),
                        b: opt.to_owned(),
                    });
                }
            }
            readonly = Some((ro, opt));
        }
        Ok(VolumeSpec {
            source,
            target,
            readonly: readonly.is_some_and(|(ro, _)| ro),
        })
    }

    /// The runtime mount once the source is a host path (a volume's `_data` or the bind
    /// source itself).
    pub fn to_mount(&self, host_path: PathBuf) -> Mount {
        Mount::Bind {
            source: host_path,
            target: self.target.clone(),
            readonly: self.readonly,
        }
    }
}

impl FromStr for VolumeSpec {
    type Err = MountSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for VolumeSpec {
    /// The canonical form, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            VolumeSource::Named(n) => write!(f, "{n}:{}", self.target)?,
            VolumeSource::Host(p) => write!(f, "{}:{}", p.display(), self.target)?,
            // The short form has no options for an anonymous volume (`/dst:ro` reads as
            // SRC:DST), so a read-only one prints as writable.
            VolumeSource::Anonymous => return write!(f, "{}", self.target),
        }
        if self.readonly {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

/// Parses a size: bytes, or a number with a `k`, `m` or `g` suffix (powers of 1024; `b` and a
/// trailing `i`/`b` are accepted: `64m`, `64M`, `64mb`, `64MiB`).
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let t = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (t.get(..i)?, 1u64 << 10),
        Some((i, 'm')) => (t.get(..i)?, 1 << 20),
        Some((i, 'g')) => (t.get(..i)?, 1 << 30),
        _ => (t, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl TmpfsSpec {
    /// Parses `DST[:OPTIONS]`.
    pub fn parse(spec: &str) -> Result<Self, MountSpecError> {
        if spec.is_empty() {
            return Err(MountSpecError::Empty { kind: "tmpfs" });
        }
        let (dst, opts) = match spec.split_once(':') {
            Some((d, o)) => (d, Some(o)),
            None => (spec, None),
        };
        let target = container_path(dst).map_err(|reason| MountSpecError::BadTarget {
            kind: "tmpfs",
            spec: spec.to_owned(),
            target: dst.to_owned(),
            reason,
        })?;
        let mut options = TmpfsOptions::default();
        let mut seen_ro: Option<&str> = None;
        let mut seen_exec: Option<&str> = None;
        let bad_value = |option, value: &str, expected| MountSpecError::BadValue {
            spec: spec.to_owned(),
            option,
            value: value.to_owned(),
            expected,
        };
        for opt in opts.into_iter().flat_map(|o| o.split(',')) {
            let conflict = |prev: Option<&str>, now: &str| match prev {
                Some(p) if p != now => Err(MountSpecError::Conflict {
                    kind: "tmpfs",
                    spec: spec.to_owned(),
                    a: p.to_owned(),
                    b: now.to_owned(),
                }),
                _ => Ok(()),
            };
            match opt.split_once('=') {
                Some(("size", v)) => {
                    let n = parse_size(v).ok_or_else(|| {
                        bad_value("size", v, "bytes or a number with k, m or g, e.g. 64m")
                    })?;
                    if n == 0 {
                        return Err(bad_value("size", v, "must be above 0"));
                    }
                    options.size_bytes = Some(n);
                }
                Some(("mode", v)) => {
                    let m = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777 && !v.is_empty())
                        .ok_or_else(|| bad_value("mode", v, "octal up to 7777, e.g. 1777"))?;
                    options.mode = Some(m);
                }
                Some(("uid", v)) => {
                    options.uid = Some(v.parse().map_err(|_| bad_value("uid", v, "a number"))?);
                }
                Some(("gid", v)) => {
                    options.gid = Some(v.parse().map_err(|_| bad_value("gid", v, "a number"))?);
                }
                None if opt == "ro" || opt == "rw" => {
                    conflict(seen_ro, opt)?;
                    seen_ro = Some(opt);
                    options.readonly = opt == "ro";
                }
                None if opt == "exec" || opt == "noexec" => {
                    conflict(seen_exec, opt)?;
                    seen_exec = Some(opt);
                    options.exec = opt == "exec";
                }
                // docker's implied defaults, accepted as no-ops.
                None if matches!(opt, "nosuid" | "nodev") => {}
                _ => {
                    return Err(MountSpecError::UnknownOption {
                        kind: "tmpfs",
                        spec: spec.to_owned(),
                        option: opt.to_owned(),
                        expected: "size=, mode=, uid=, gid=, ro, rw, exec, noexec",
                    })
                }
            }
        }
        Ok(TmpfsSpec { target, options })
    }

    /// The runtime mount.
    pub fn to_mount(&self) -> Mount {
        Mount::Tmpfs {
            target: self.target.clone(),
            options: self.options,
        }
    }
}

impl FromStr for TmpfsSpec {
    type Err = MountSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TmpfsSpec {
    /// The canonical form, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let mut parts = Vec::new();
        if let Some(s) = o.size_bytes {
            parts.push(format!("size={s}"));
        }
        if let Some(m) = o.mode {
            parts.push(format!("mode={m:o}"));
        }
        if let Some(u) = o.uid {
            parts.push(format!("uid={u}"));
        }
        if let Some(g) = o.gid {
            parts.push(format!("gid={g}"));
        }
        if o.readonly {
            parts.push("ro".into());
        }
        if o.exec {
            parts.push("exec".into());
        }
        if parts.is_empty() {
            write!(f, "{}", self.target)
        } else {
            write!(f, "{}:{}", self.target, parts.join(","))
        }
    }
}

/// Refuses two mounts on one container path (volumes and tmpfs together), naming both specs.
pub fn check_targets(volumes: &[VolumeSpec], tmpfs: &[TmpfsSpec]) -> Result<(), MountSpecError> {
    let mut seen: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let all = volumes
        .iter()
        .map(|v| (v.target.as_str(), v.to_string()))
        .chain(tmpfs.iter().map(|t| (t.target.as_str(), t.to_string())));
    for (target, spec) in all {
        if let Some(first) = seen.get(target) {
            return Err(MountSpecError::Duplicate {
                target: target.to_owned(),
                first: first.clone(),
                second: spec,
            });
        }
        seen.insert(target, spec);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn volume_forms() {
        let v = VolumeSpec::parse("data:/var/lib/data").unwrap();
        assert_eq!(v.source, VolumeSource::Named("data".into()));
        assert_eq!(v.target, "/var/lib/data");
        assert!(!v.readonly);
        let v = VolumeSpec::parse("/srv/www:/usr/share/nginx/html/:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Host("/srv/www".into()));
        assert_eq!(v.target, "/usr/share/nginx/html");
        assert!(v.readonly);
        let v = VolumeSpec::parse("/cache").unwrap();
        assert_eq!(v.source, VolumeSource::Anonymous);
        assert!(VolumeSpec::parse("v1:/d:rw").is_ok_and(|v| !v.readonly));
        assert!(VolumeSpec::parse("v1:/d:ro,ro").is_ok_and(|v| v.readonly));
        assert_eq!(
            VolumeSpec::parse("v1://a//b/").unwrap().target,
            "/a/b",
            "normalized"
        );
    }

    #[test]
    fn volume_errors_name_the_bad_part() {
        let cases = [
            ("", "empty volume spec"),
            ("a:/b:ro:x", "too many ':'"),
            (":/data", "empty source"),
            ("./data:/data", "source \"./data\""),
            ("my vol:/data", "source \"my vol\""),
            ("x:/data", "source \"x\""),
            ("-v:/data", "source \"-v\""),
            ("/a/../etc:/data", "source \"/a/../etc\""),
            (
                "data:relative",
                "container path \"relative\" must be absolute",
            ),
            ("data:/", "container path \"/\" cannot be /"),
            ("data:/a/../b", "'..'"),
            ("data:/proc/x", "under /proc"),
            ("data:/d:rx", "unknown option \"rx\""),
            ("data:/d:ro,rw", "conflicting options \"ro\" and \"rw\""),
            ("data:/d:", "unknown option \"\""),
        ];
        for (spec, want) in cases {
            let e = VolumeSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(want), "{spec:?}: {e:?} should contain {want:?}");
            if !spec.is_empty() {
                assert!(e.contains(&format!("{spec:?}")), "{e} names the spec");
            }
        }
    }

    #[test]
    fn names_follow_dockers_rule() {
        for ok in ["ab", "a.b-c_d", "0data", &"v".repeat(255)] {
            assert!(valid_volume_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            ".ab",
            "_ab",
            "a/b",
            "a b",
            "a:b",
            &"v".repeat(256),
            "é1",
        ] {
            assert!(!valid_volume_name(bad), "{bad}");
        }
    }

    #[test]
    fn tmpfs_forms() {
        let t = TmpfsSpec::parse("/run:size=64m,mode=1777").unwrap();
        assert_eq!(t.target, "/run");
        assert_eq!(t.options.size_bytes, Some(64 << 20));
        assert_eq!(t.options.mode, Some(0o1777));
        assert!(!t.options.exec && !t.options.readonly);
        let t = TmpfsSpec::parse("/x:exec,uid=1000,gid=1000,size=4096,nosuid").unwrap();
        assert!(t.options.exec);
        assert_eq!((t.options.uid, t.options.gid), (Some(1000), Some(1000)));
        assert_eq!(t.options.size_bytes, Some(4096));
        assert_eq!(
            TmpfsSpec::parse("/tmp").unwrap().options,
            TmpfsOptions::default()
        );
        match TmpfsSpec::parse("/t:size=1g").unwrap().to_mount() {
            Mount::Tmpfs { target, options } => {
                assert_eq!(target, "/t");
                assert_eq!(options.size_bytes, Some(1 << 30));
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn tmpfs_errors_name_the_bad_part() {
        let cases = [
            ("", "empty tmpfs spec"),
            ("run", "container path \"run\" must be absolute"),
            ("/run:size=lots", "bad size value \"lots\""),
            ("/run:size=0", "bad size value \"0\""),
            ("/run:size=99999999999999999999g", "bad size value"),
            ("/run:mode=999", "bad mode value \"999\""),
            ("/run:mode=17777", "bad mode value \"17777\""),
            ("/run:uid=root", "bad uid value \"root\""),
            ("/run:suid", "unknown option \"suid\""),
            ("/run:ro,rw", "conflicting options \"ro\" and \"rw\""),
            (
                "/run:exec,noexec",
                "conflicting options \"exec\" and \"noexec\"",
            ),
        ];
        for (spec, want) in cases {
            let e = TmpfsSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(want), "{spec:?}: {e:?} should contain {want:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("64mb"), Some(64 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        for bad in ["", "m", "-1", "1.5m", "1t", "12x"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn duplicate_targets_are_refused_across_kinds() {
        let v = [
            VolumeSpec::parse("a1:/data").unwrap(),
            VolumeSpec::parse("/srv:/srv").unwrap(),
        ];
        let t = [TmpfsSpec::parse("/data/:size=1m").unwrap()];
        let e = check_targets(&v, &t).unwrap_err().to_string();
        assert!(e.contains("\"/data\""), "{e}");
        assert!(
            e.contains("a1:/data") && e.contains("/data:size=1048576"),
            "{e}"
        );
        assert!(check_targets(&v, &[]).is_ok());
    }

    fn target() -> impl Strategy<Value = String> {
        proptest::collection::vec("[a-z0-9_.-]{1,8}", 1..4).prop_filter_map("no dots", |v| {
            if v.iter().any(|c| c == "." || c == ".." || c == "proc") {
                None
            } else {
                Some(format!("/{}", v.join("/")))
            }
        })
    }

    proptest! {
        #[test]
        fn volume_specs_round_trip(
            name in "[a-z0-9][a-z0-9_.-]{1,12}",
            host in target(),
            dst in target(),
            kind in 0u8..3,
            ro in any::<bool>(),
        ) {
            let spec = match kind {
                0 => VolumeSpec { source: VolumeSource::Named(name), target: dst, readonly: ro },
                1 => VolumeSpec { source: VolumeSource::Host(host.into()), target: dst, readonly: ro },
                _ => VolumeSpec { source: VolumeSource::Anonymous, target: dst, readonly: false },
            };
            prop_assert_eq!(VolumeSpec::parse(&spec.to_string()).unwrap(), spec);
        }

        #[test]
        fn tmpfs_specs_round_trip(
            dst in target(),
            size in proptest::option::of(1u64..1 << 40),
            mode in proptest::option::of(0u32..0o7777),
            uid in proptest::option::of(any::<u32>()),
            ro in any::<bool>(),
            exec in any::<bool>(),
        ) {
            let spec = TmpfsSpec {
                target: dst,
                options: TmpfsOptions { size_bytes: size, mode, uid, gid: None, readonly: ro, exec },
            };
            prop_assert_eq!(TmpfsSpec::parse(&spec.to_string()).unwrap(), spec);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = VolumeSpec::parse(&s);
            let _ = TmpfsSpec::parse(&s);
        }
    }
}
