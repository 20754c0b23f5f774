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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio as ProcStdio};
use std::time::{Duration, Instant};

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
    let out_dir = bolt_bench::target_dir().join("bolt-bench");
    fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let md = out_dir.join("run.md");
    let q = |p: &Path| p.display().to_string();
    let agent = BoltAgent::start(dir)?;
    let mut hyperfine = format!(
        "hyperfine -N --runs 30 --warmup 3 --export-markdown {md} \
         -n bolt-runtime '{exe} {CHILD_FLAG} {dir}' \
         -n bolt-run '{run}' \
         -n runc 'runc --root {dir}/runc-state run --bundle {bundle} bench-runc'",
        md = q(&md),
        exe = q(&exe),
        dir = q(dir),
        bundle = q(&bundle),
        run = agent.run_command(),
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
    if have("podman") {
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
    let table = fs::read_to_string(&md).map_err(|e| e.to_string())?;
    println!("\n{table}");
    println!("(kept in {})", md.display());
    Ok(())
}

/// A `bolt agent` on a root inside the bench directory, with the busybox tree imported as
/// `bench/busybox:latest`. Stopped (SIGTERM) by [`BoltAgent::stop`] or when dropped.
struct BoltAgent {
    bin: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

const BENCH_IMAGE: &str = "bench/busybox:latest";

impl BoltAgent {
    fn start(dir: &Path) -> Result<BoltAgent, String> {
        let bin = bolt_bench::bolt_binary()?;
        write_oci_layout(&dir.join("lower"), &dir.join("oci"))?;
        let socket = dir.join("bolt.sock");
        let log = fs::File::create(dir.join("agent.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("--socket")
            .arg(&socket)
            .arg("agent")
            .arg("--root")
            .arg(dir.join("bolt-root"))
            .arg("--registry-auth")
            .arg(dir.join("no-registry-auth.json"))
            .env_remove("BOLT_LOG")
            .stdin(ProcStdio::null())
            .stdout(ProcStdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let agent = BoltAgent {
            bin,
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !agent.bolt(&["info"]).is_ok_and(|o| o.status.success()) {
            if Instant::now() > deadline {
                return Err("the bolt agent did not answer within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let oci = dir.join("oci").display().to_string();
        agent.check(&["image", "import", "-q", &oci, "--reference", BENCH_IMAGE])?;
        // One run outside the measurement: the image is cached, the paths are warm.
        agent.check(&["run", "--rm", "--network", "none", BENCH_IMAGE, "/bin/true"])?;
        Ok(agent)
    }

    fn bolt(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(ProcStdio::null())
            .output()
    }

    fn check(&self, args: &[&str]) -> Result<(), String> {
        let out = self.bolt(args).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "bolt {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn run_command(&self) -> String {
        format!(
            "{} --socket {} run --rm --network none {BENCH_IMAGE} /bin/true",
            self.bin.display(),
            self.socket.display()
        )
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

impl Drop for BoltAgent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `sha256:HEX` and size of a file (sha256sum, as the rest of the bench uses host tools).
fn digest(path: &Path) -> Result<(String, u64), String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or("").to_owned();
    if !out.status.success() || hex.len() != 64 {
        return Err(format!("sha256sum {}: {text}", path.display()));
    }
    let size = fs::metadata(path).map_err(|e| e.to_string())?.len();
    Ok((format!("sha256:{hex}"), size))
}

/// An OCI image layout of `tree` (one uncompressed layer, `Cmd ["/bin/sh"]`) in `out`.
fn write_oci_layout(tree: &Path, out: &Path) -> Result<(), String> {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
    let layer = out.join("layer.tar");
    sh(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(tree)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let (layer_digest, layer_size) = digest(&layer)?;
    let put = |digest: &str, path: &Path| -> Result<(), String> {
        let hex = digest.trim_start_matches("sha256:");
        fs::rename(path, blobs.join(hex)).map_err(|e| e.to_string())
    };
    put(&layer_digest, &layer)?;
    let write_blob = |name: &str, text: String| -> Result<(String, u64), String> {
        let p = out.join(name);
        fs::write(&p, text).map_err(|e| e.to_string())?;
        let d = digest(&p)?;
        put(&d.0, &p)?;
        Ok(d)
    };
    let (config_digest, config_size) = write_blob(
        "config.json",
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
        ),
    )?;
    let (manifest_digest, manifest_size) = write_blob(
        "manifest.json",
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#
        ),
    )?;
    fs::write(
        out.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#
        ),
    )
    .map_err(|e| e.to_string())?;
    fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| e.to_string())
}
