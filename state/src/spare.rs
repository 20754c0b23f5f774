//! Spare capsule specs: the allocations of forgotten capsules' specs, reused for new ones.
//!
//! Every capsule creation copies the event's [`CapsuleSpec`] into the state: with its strings,
//! vectors and label map that is about twenty allocations, and as many frees when the capsule is
//! forgotten ([`crate::REMOVED_RETAINED`]) — under churn, a third of the fold's time. The fold
//! forgets about as many capsules as it creates, so a forgotten capsule's spec (when nothing
//! else shares it) is kept here, and the next creation overwrites it field by field
//! (`clone_from` reuses each string's and vector's buffer) instead of allocating a new one.
//!
//! A pure cache of memory: the spec's content is always the event's, so the state, its hash and
//! its encoding are the same as without it. It is per thread (no locking, and `apply` keeps its
//! signature), bounded to [`SPARE_MAX`] specs.

use std::cell::RefCell;
use std::sync::Arc;

use bolt_events::payload::CapsuleSpec;

use crate::model::CapsuleInfo;

/// Most specs kept per thread.
const SPARE_MAX: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<Arc<CapsuleSpec>>> = const { RefCell::new(Vec::new()) };
}

/// A shared copy of `spec`, in a spare spec's allocations when there is one.
pub(crate) fn spec(spec: &CapsuleSpec) -> Arc<CapsuleSpec> {
    let spare = SPARE
        .try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten();
    if let Some(mut arc) = spare {
        if let Some(dst) = Arc::get_mut(&mut arc) {
            copy(dst, spec);
            return arc;
        }
    }
    Arc::new(spec.clone())
}

/// Drop a capsule, keeping its spec as a spare.
pub(crate) fn forget(capsule: CapsuleInfo) {
    keep(capsule.spec);
}

/// Keep `spec` as a spare (while there is room). Whether something else still holds it is
/// checked when it is reused: the spec of a long-forgotten capsule is cold in the cache, and
/// reading its counts now would cost a miss that the reuse, which writes next to them, pays
/// anyway.
pub(crate) fn keep(spec: Arc<CapsuleSpec>) {
    let _ = SPARE.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < SPARE_MAX {
                s.push(spec);
            }
        }
    });
}

/// `*dst = src.clone()`, reusing `dst`'s buffers. Destructures every field, so a field added to
/// [`CapsuleSpec`] does not compile until it is copied here too.
fn copy(dst: &mut CapsuleSpec, src: &CapsuleSpec) {
    let CapsuleSpec {
        image,
        image_digest,
        command,
        env,
        workdir,
        user,
        hostname,
        network,
        memory_bytes,
        cpu_millis,
        pids_limit,
        restart,
        ports,
        mounts,
        labels,
    } = src;
    dst.image.clone_from(image);
    dst.image_digest.clone_from(image_digest);
    dst.command.clone_from(command);
    dst.env.clone_from(env);
    dst.workdir.clone_from(workdir);
    dst.user.clone_from(user);
    dst.hostname.clone_from(hostname);
    dst.network.clone_from(network);
    dst.memory_bytes = *memory_bytes;
    dst.cpu_millis = *cpu_millis;
    dst.pids_limit = *pids_limit;
    dst.restart.clone_from(restart);
    dst.ports.clone_from(ports);
    dst.mounts.clone_from(mounts);
    // A map has no buffer to reuse; labels are often the same from one capsule to the next.
    if dst.labels != *labels {
        dst.labels.clone_from(labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(n: usize) -> CapsuleSpec {
        CapsuleSpec {
            image: format!("img:{n}"),
            image_digest: "sha256:00".repeat(n + 1),
            command: (0..n).map(|i| format!("arg{i}")).collect(),
            env: vec![format!("N={n}")],
            workdir: Some("/w".into()),
            user: n.is_multiple_of(2).then(|| "u".into()),
            hostname: None,
            network: "net".into(),
            memory_bytes: Some(n as u64),
            cpu_millis: None,
            pids_limit: Some(3),
            restart: "always".into(),
            ports: vec![],
            mounts: vec!["v:/v".into(); n],
            labels: (0..n).map(|i| (format!("k{i}"), "v".into())).collect(),
        }
    }

    #[test]
    fn a_spare_spec_is_overwritten_whole() {
        // Shapes that grow, shrink, gain and lose optional fields and labels.
        for (a, b) in [(3, 1), (1, 4), (0, 2), (2, 0), (5, 5)] {
            let mut dst = full(a);
            copy(&mut dst, &full(b));
            assert_eq!(dst, full(b));
        }
        let mut dst = full(2);
        copy(&mut dst, &CapsuleSpec::default());
        assert_eq!(dst, CapsuleSpec::default());
    }

    #[test]
    fn spares_are_reused_only_when_unshared() {
        let kept = Arc::new(full(3));
        keep(Arc::clone(&kept)); // shared: not kept
        let made = spec(&full(1));
        assert!(!Arc::ptr_eq(&made, &kept));
        assert_eq!(*made, full(1));

        let at = Arc::as_ptr(&made);
        keep(made);
        let again = spec(&full(2));
        assert_eq!(Arc::as_ptr(&again), at, "the spare's allocation is reused");
        assert_eq!(*again, full(2));
    }
}
