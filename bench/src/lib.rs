//! `bolt-bench`: benchmarks that compare Bolt with its peers side by side. Nothing may depend on it.

use std::path::{Path, PathBuf};
use std::process::Command;

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
