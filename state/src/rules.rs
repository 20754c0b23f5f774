//! Rules about names and mount specs that more than one part of Bolt checks: written once here
//! so `decide`, the agent's services and its API agree. Pure; never imports anything but std.

/// docker's name rule: `[A-Za-z0-9][A-Za-z0-9_.-]*`, between `min` and `max` bytes. Capsule
/// names use it up to [`CAPSULE_NAME_MAX`], snapshot names up to [`SNAPSHOT_NAME_MAX`].
pub fn valid_name(name: &str, min: usize, max: usize) -> bool {
    let b = name.as_bytes();
    b.len() >= min.max(1)
        && b.len() <= max
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The longest capsule name (docker's limit).
pub const CAPSULE_NAME_MAX: usize = 128;
/// The longest snapshot name (one btrfs subvolume name with room for the target's prefix).
pub const SNAPSHOT_NAME_MAX: usize = 200;

/// Whether `name` is a valid capsule name: docker's rule, at most [`CAPSULE_NAME_MAX`] bytes.
pub fn valid_capsule_name(name: &str) -> bool {
    valid_name(name, 1, CAPSULE_NAME_MAX)
}

/// Whether `name` is a valid snapshot name: docker's rule, at most [`SNAPSHOT_NAME_MAX`] bytes.
pub fn valid_snapshot_name(name: &str) -> bool {
    valid_name(name, 1, SNAPSHOT_NAME_MAX)
}

/// The named volume a recorded `-v` spec mounts: the source of `NAME:/dst[:ro]`. A bind mount
/// (`/host:/dst`) and an unnamed target (`/dst`) mount none.
pub fn mounted_volume(spec: &str) -> Option<&str> {
    spec.split(':')
        .next()
        .filter(|s| !s.is_empty() && !s.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rule() {
        for ok in ["a", "web-1", "x.y_z", "0abc"] {
            assert!(valid_capsule_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "ä", "a:b"] {
            assert!(!valid_capsule_name(bad), "{bad:?}");
        }
        assert!(valid_capsule_name(&"a".repeat(128)));
        assert!(!valid_capsule_name(&"a".repeat(129)));
        assert!(valid_snapshot_name(&"a".repeat(200)));
        assert!(!valid_snapshot_name(&"a".repeat(201)));
        assert!(!valid_name("a", 2, 10));
    }

    #[test]
    fn only_a_named_source_mounts_a_volume() {
        assert_eq!(mounted_volume("data:/var/lib/x"), Some("data"));
        assert_eq!(mounted_volume("data:/x:ro"), Some("data"));
        assert_eq!(mounted_volume("/srv:/x"), None);
        assert_eq!(mounted_volume("/x"), None);
        assert_eq!(mounted_volume(""), None);
    }
}
