//! `bolt-bench`: benchmarks that compare Bolt with its peers side by side. Nothing may depend on it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/`: `$CARGO_TARGET_DIR`, else three levels above the running bench executable
/// (`target/release/deps/NAME-HASH`).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The workspace root (cargo runs benches in the package directory, `bench/`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The release `bolt` the benches drive: `$BOLT_BIN` (a relative path is taken from the
/// workspace root, where the docs' commands run), or `cargo build --release -p bolt-agent` now
/// (a no-op when it is fresh).
pub fn bolt_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("BOLT_BIN") {
        let bin = PathBuf::from(bin);
        let bin = if bin.is_relative() {
            workspace_root().join(bin)
        } else {
            bin
        };
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("BOLT_BIN: no file {}", bin.display()))
        };
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "bolt-agent", "--bin", "bolt"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("{cargo} build: {e}"))?;
    if !status.success() {
        return Err("cargo build --release -p bolt-agent failed (or set BOLT_BIN)".into());
    }
    let bin = target_dir().join("release").join("bolt");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("no {}", bin.display()))
    }
}

/// The tag the benches import their busybox tree under.
pub const BENCH_IMAGE: &str = "bench/busybox:latest";

/// `main`'s end: success, or `NAME bench: ERROR` on stderr and failure.
pub fn exit_code(bench: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bench} bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `tool ARG` runs and exits 0.
pub fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the bench can run here: root and every `(tool, version flag)` installed. Prints
/// `NAME bench skipped: WHY` when not.
pub fn can_run(bench: &str, tools: &[(&str, &str)]) -> bool {
    if !nix::unistd::geteuid().is_root() {
        println!("{bench} bench skipped: needs root");
        return false;
    }
    for (tool, arg) in tools {
        if !have(tool, arg) {
            println!("{bench} bench skipped: {tool} is not installed");
            return false;
        }
    }
    true
}

/// Runs `cmd`; an error names the command and its status.
pub fn sh(cmd: &mut Command) -> Result<(), String> {
    let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {st}"))
    }
}

/// The number in `$NAME` (`_` separators allowed), else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (sorted in place); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A fresh `/var/tmp/bolt-bench-NAME-*` directory, removed on drop.
pub fn bench_tempdir(bench: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(&format!("bolt-bench-{bench}-"))
        .tempdir_in("/var/tmp")
        .map_err(|e| e.to_string())
}

/// `target/bolt-bench/`, made if missing: where the benches keep their tables.
pub fn out_dir() -> Result<PathBuf, String> {
    let dir = target_dir().join("bolt-bench");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// Prints the markdown table kept in `md` and where it is kept.
pub fn print_table(md: &Path) -> Result<(), String> {
    let table = fs::read_to_string(md).map_err(|e| e.to_string())?;
    println!("\n{table}");
    println!("(kept in {})", md.display());
    Ok(())
}

/// The `"mean"` values of a hyperfine JSON export, in order (seconds).
pub fn hyperfine_means(json: &str) -> Vec<f64> {
    json.split("\"mean\":")
        .skip(1)
        .filter_map(|rest| {
            let end = rest.find([',', '}'])?;
            rest[..end].trim().parse().ok()
        })
        .collect()
}

/// The busybox lower directory: /bin/busybox plus its applet links.
pub fn build_lower(lower: &Path) -> Result<(), String> {
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

/// `sha256:HEX` and size of a file (sha256sum, as the rest of the benches use host tools).
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
pub fn write_oci_layout(tree: &Path, out: &Path) -> Result<(), String> {
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

/// A `bolt agent` on a root inside a bench directory, with that directory's busybox tree
/// (`DIR/lower`, see [`build_lower`]) imported as [`BENCH_IMAGE`]. Its capsules are removed
/// and it is stopped (SIGTERM) by [`Agent::stop`] or on drop.
#[derive(Debug)]
pub struct Agent {
    /// The `bolt` binary.
    pub bin: PathBuf,
    /// The agent's API socket.
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Starts the agent on `DIR/bolt-root` (inside the named network namespace `netns`, under
    /// `nsenter`, when given), waits until it answers and imports the busybox tree.
    pub fn start(dir: &Path, netns: Option<&Path>) -> Result<Agent, String> {
        let bin = bolt_binary()?;
        write_oci_layout(&dir.join("lower"), &dir.join("oci"))?;
        let socket = dir.join("bolt.sock");
        let log = fs::File::create(dir.join("agent.log")).map_err(|e| e.to_string())?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", ns.display())).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .arg("--socket")
            .arg(&socket)
            .arg("agent")
            .arg("--root")
            .arg(dir.join("bolt-root"))
            .arg("--registry-auth")
            .arg(dir.join("no-registry-auth.json"))
            .env_remove("BOLT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let agent = Agent {
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
        Ok(agent)
    }

    /// `bolt --socket SOCKET ARGS...`, its output captured.
    pub fn bolt(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// [`Agent::bolt`] that must succeed: its stdout, or an error with its stderr.
    pub fn check(&self, args: &[&str]) -> Result<String, String> {
        let out = self.bolt(args).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "bolt {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The shell command line `BOLT --socket SOCKET ARGS` (for hyperfine).
    pub fn command_line(&self, args: &str) -> String {
        format!(
            "{} --socket {} {args}",
            self.bin.display(),
            self.socket.display()
        )
    }

    /// Removes the agent's capsules and stops it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(ids) = self.check(&["ps", "-a", "-q"]) {
                for id in ids.split_whitespace() {
                    let _ = self.check(&["rm", "-f", id]);
                }
            }
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}
