//! Capsule start→exit latency: Bolt's runtime, `bolt run`, `runc run`, `crun run` and
//! `podman run` starting `/bin/true` in the same busybox tree, side by side in one hyperfine
//! run.
//!
//! `cargo bench -p bolt-bench --bench run` (as root). Needs hyperfine, runc and busybox-static;
//! crun and podman are measured when installed. crun refuses hybrid cgroup hosts, so the whole
//! hyperfine run happens inside `unshare -m --propagation private` after unmounting
//! `/sys/fs/cgroup/unified` in that private mount namespace only (the host's mounts are
//! untouched).
//!
//! The columns:
//!
//! - `bolt-runtime`: this same binary re-invoked as `run __bolt_true DIR`: it detects the cgroup
//!   hierarchy, creates the capsule's cgroup, mounts a fresh overlay (busybox lower dir, new
//!   upper), starts `/bin/true` through the library, waits, and removes cgroup and upper dir.
//! - `bolt-run`: the whole product path, `bolt run --rm --network none IMAGE /bin/true` against
//!   a `bolt agent` on a temporary root, the image cached (imported once from an OCI layout of
//!   the same busybox tree): CLI, API, per-capsule supervisor process, runtime, the four
//!   durable events (created, started, exited, removed), the output stream and the cleanup.
//!   The `bolt` binary is `$BOLT_BIN` or `cargo build --release -p bolt-agent`.
//! - `runc`, `crun`: the bundle `bolt_capsule::runtime::oci::write_bundle` writes for the same
//!   spec, with `root.path` on the busybox directory (OCI runtimes do not mount overlays).
//! - `podman`: `podman run --rm --network none --rootfs DIR` on the busybox directory, with
//!   the flags this host needs (`--cgroup-manager=cgroupfs --runtime runc` and explicit
//!   `--ulimit` values).
//!
//! The markdown table is printed and kept in `target/bolt-bench/run.md`.

use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode};

use bolt_bench::{build_lower, have, sh, Agent, BENCH_IMAGE};
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
    bolt_bench::exit_code("run", bench())
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

fn bench() -> Result<(), String> {
    if !bolt_bench::can_run(
        "run",
        &[
            ("hyperfine", "--version"),
            ("runc", "--version"),
            ("unshare", "--version"),
        ],
    ) {
        return Ok(());
    }
    let crun = have("crun", "--version");
    let tmp = bolt_bench::bench_tempdir("run")?;
    let dir = tmp.path();
    build_lower(&dir.join("lower"))?;

    // The OCI bundle of the same spec, rooted directly on the busybox directory.
    let mut spec = spec_for(dir, "bench-oci", &dir.join("unused"));
    spec.rootfs.target = dir.join("lower");
    let bundle = dir.join("bundle");
    oci::write_bundle(&spec, &bundle).map_err(|e| e.to_string())?;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let md = bolt_bench::out_dir()?.join("run.md");
    let q = |p: &Path| p.display().to_string();
    let agent = Agent::start(dir, None)?;
    // One run outside the measurement: the image is cached, the paths are warm.
    agent.check(&["run", "--rm", "--network", "none", BENCH_IMAGE, "/bin/true"])?;
    let mut hyperfine = format!(
        "hyperfine -N --runs 30 --warmup 3 --export-markdown {md} \
         -n bolt-runtime '{exe} {CHILD_FLAG} {dir}' \
         -n bolt-run '{run}' \
         -n runc 'runc --root {dir}/runc-state run --bundle {bundle} bench-runc'",
        md = q(&md),
        exe = q(&exe),
        dir = q(dir),
        bundle = q(&bundle),
        run = agent.command_line(&format!("run --rm --network none {BENCH_IMAGE} /bin/true")),
    );
    if crun {
        hyperfine.push_str(&format!(
            " -n crun 'crun --root {dir}/crun-state run --bundle {bundle} bench-crun'",
            dir = q(dir),
            bundle = q(&bundle),
        ));
    } else {
        println!("crun is not installed (apt-get install -y crun): no crun column");
    }
    if have("podman", "--version") {
        hyperfine.push_str(&format!(
            " -n podman 'podman run --rm --network none --cgroup-manager=cgroupfs --runtime runc \
             --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --rootfs {lower} /bin/true'",
            lower = q(&dir.join("lower")),
        ));
    } else {
        println!("podman is not installed (apt-get install -y podman): no podman column");
    }
    // Hide the hybrid host's cgroup2 mount from crun, in a private mount namespace only.
    let script = format!(
        "(mountpoint -q /sys/fs/cgroup/unified && umount /sys/fs/cgroup/unified) || true; {hyperfine}"
    );
    let measured = sh(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(&script));
    agent.stop();
    // runc (and crun) make `/bolt` in every cgroup hierarchy and remove only their leaf.
    bolt_capsule::runtime::cgroup::remove_empty_parents();
    measured?;
    bolt_bench::print_table(&md)
}
