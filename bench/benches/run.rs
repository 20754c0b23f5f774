//! Capsule start→exit latency: Bolt's runtime, `runc run` and `crun run` starting `/bin/true`
//! in the same busybox bundle, side by side in one hyperfine run.
//!
//! `cargo bench -p bolt-bench --bench run` (as root). Needs hyperfine, runc and busybox-static;
//! crun is measured when installed. crun refuses hybrid cgroup hosts, so the whole hyperfine run
//! happens inside `unshare -m --propagation private` after unmounting `/sys/fs/cgroup/unified`
//! in that private mount namespace only (the host's mounts are untouched).
//!
//! The Bolt column is this same binary re-invoked as `run __bolt_true DIR`: it detects the
//! cgroup hierarchy, creates the capsule's cgroup, mounts a fresh overlay (busybox lower dir,
//! new upper), starts `/bin/true` through the library, waits, and removes cgroup and upper dir.
//! runc and crun get the bundle `bolt_capsule::runtime::oci::write_bundle` writes for the same
//! spec, with `root.path` on the busybox directory (OCI runtimes do not mount overlays).
//!
//! The markdown table is printed and kept in `target/bolt-bench/run.md`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use bolt_capsule::runtime::{oci, CapsuleSpec, Rootfs, Runtime, Stdio};

const CHILD_FLAG: &str = "__bolt_true";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD_FLAG) {
        return match args.get(2) {
            Some(dir) => run_once(Path::new(dir)),
            None => ExitCode::from(2),
        };
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("run bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn spec_for(dir: &Path, id: &str, capsule_dir: &Path) -> CapsuleSpec {
    let rootfs = Rootfs::in_dir(vec![dir.join("lower")], capsule_dir);
    CapsuleSpec::new(id, rootfs, vec!["/bin/true".to_owned()])
}

/// One capsule start→exit through the library (what `bolt run --rm` will do).
fn run_once(dir: &Path) -> ExitCode {
    let id = format!("bench-{}", std::process::id());
    let capsule_dir = dir.join("capsules").join(&id);
    let spec = spec_for(dir, &id, &capsule_dir);
    let result = (|| -> Result<i32, String> {
        let runtime = Runtime::new().map_err(|e| e.to_string())?;
        let mut capsule = runtime
            .spawn(&spec, Stdio::inherit())
            .map_err(|e| e.to_string())?;
        let status = capsule.wait().map_err(|e| e.to_string())?;
        capsule.destroy().map_err(|e| e.to_string())?;
        Ok(status.exit_code())
    })();
    let _ = fs::remove_dir_all(&capsule_dir);
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(125)
        }
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sh(cmd: &mut Command) -> Result<(), String> {
    let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {st}"))
    }
}

/// The busybox lower directory: /bin/busybox plus its applet links.
fn build_lower(lower: &Path) -> Result<(), String> {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(lower.join(d)).map_err(|e| e.to_string())?;
    }
    fs::copy("/bin/busybox", lower.join("bin/busybox")).map_err(|e| format!("busybox: {e}"))?;
    sh(Command::new("/bin/busybox")
        .arg("--install")
        .arg("-s")
        .arg(lower.join("bin")))?;
    // The links point at busybox's real path (/usr/bin/busybox on merged-/usr hosts).
    let target = fs::read_link(lower.join("bin/sh")).map_err(|e| e.to_string())?;
    let inside = lower.join(target.strip_prefix("/").unwrap_or(&target));
    if !inside.exists() {
        if let Some(parent) = inside.parent() {
            fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        fs::copy("/bin/busybox", &inside).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn bench() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        println!("run bench skipped: needs root");
        return Ok(());
    }
    for tool in ["hyperfine", "runc", "unshare"] {
        if !have(tool) {
            println!("run bench skipped: {tool} is not installed");
            return Ok(());
        }
    }
    let crun = have("crun");
    let tmp = tempfile::Builder::new()
        .prefix("bolt-bench-run-")
        .tempdir_in("/var/tmp")
        .map_err(|e| e.to_string())?;
    let dir = tmp.path();
    build_lower(&dir.join("lower"))?;

    // The OCI bundle of the same spec, rooted directly on the busybox directory.
    let mut spec = spec_for(dir, "bench-oci", &dir.join("unused"));
    spec.rootfs.target = dir.join("lower");
    let bundle = dir.join("bundle");
    oci::write_bundle(&spec, &bundle).map_err(|e| e.to_string())?;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out_dir = target_dir().join("bolt-bench");
    fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let md = out_dir.join("run.md");
    let q = |p: &Path| p.display().to_string();
    let mut hyperfine = format!(
        "hyperfine -N --runs 30 --warmup 3 --export-markdown {md} \
         -n bolt '{exe} {CHILD_FLAG} {dir}' \
         -n runc 'runc --root {dir}/runc-state run --bundle {bundle} bench-runc'",
        md = q(&md),
        exe = q(&exe),
        dir = q(dir),
        bundle = q(&bundle),
    );
    if crun {
        hyperfine.push_str(&format!(
            " -n crun 'crun --root {dir}/crun-state run --bundle {bundle} bench-crun'",
            dir = q(dir),
            bundle = q(&bundle),
        ));
    } else {
        println!("crun is not installed (apt-get install -y crun): measuring bolt and runc only");
    }
    // Hide the hybrid host's cgroup2 mount from crun, in a private mount namespace only.
    let script = format!(
        "(mountpoint -q /sys/fs/cgroup/unified && umount /sys/fs/cgroup/unified) || true; {hyperfine}"
    );
    sh(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(&script))?;
    let table = fs::read_to_string(&md).map_err(|e| e.to_string())?;
    println!("\n{table}");
    println!("(kept in {})", md.display());
    Ok(())
}

fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // benches run from target/release/deps/run-HASH
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}
