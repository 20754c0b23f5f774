//! The nftables driver: runs `nft` (Debian's nftables) inside a network namespace. The rules
//! themselves come from the pure model in [`super::nat`].

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::nat::{NatTable, TABLE_FAMILY, TABLE_NAME};
use super::netns::{Netns, NetnsError};

/// Why `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// No `nft` binary was found.
    #[error("nft not found in PATH, /usr/sbin or /sbin: install the nftables package")]
    NotFound,
    /// Starting `nft` failed.
    #[error("run {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `nft` refused the script or the command.
    #[error("nft {args} failed ({status}): {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// The exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The `nft` binary: from `PATH`, else `/usr/sbin/nft` or `/sbin/nft`.
pub fn nft_binary() -> Result<PathBuf, NftError> {
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nft"));
    from_path
        .chain(["/usr/sbin/nft", "/sbin/nft"].map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or(NftError::NotFound)
}

/// Runs `nft ARGS` inside `ns` with `stdin` on its standard input; returns its stdout.
pub fn run(ns: &Netns, args: &[&str], stdin: &str) -> Result<String, NftError> {
    let nft = nft_binary()?;
    ns.run(|| run_here(&nft, args, stdin))?
}

fn run_here(nft: &Path, args: &[&str], stdin: &str) -> Result<String, NftError> {
    let spawn_err = |source| NftError::Spawn {
        path: nft.to_path_buf(),
        source,
    };
    let mut child = Command::new(nft)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NftError::Failed {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces Bolt's table in `ns` with `table`, in one transaction.
pub fn apply(ns: &Netns, table: &NatTable) -> Result<(), NftError> {
    run(ns, &["-f", "-"], &table.render()).map(drop)
}

/// Removes Bolt's table from `ns` (nothing happens when there is none).
pub fn delete(ns: &Netns) -> Result<(), NftError> {
    run(ns, &["-f", "-"], &NatTable::render_delete()).map(drop)
}

/// The tables in `ns`, as `FAMILY NAME` pairs.
pub fn tables(ns: &Netns) -> Result<Vec<(String, String)>, NftError> {
    let out = run(ns, &["list", "tables"], "")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("table"), Some(family), Some(name)) => {
                    Some((family.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect())
}

/// Whether Bolt's table exists in `ns`.
pub fn has_table(ns: &Netns) -> Result<bool, NftError> {
    Ok(tables(ns)?
        .iter()
        .any(|(f, n)| f == TABLE_FAMILY && n == TABLE_NAME))
}

/// Bolt's table in `ns` as `nft list table` prints it, or `None` when there is none.
pub fn list(ns: &Netns) -> Result<Option<String>, NftError> {
    if !has_table(ns)? {
        return Ok(None);
    }
    run(ns, &["list", "table", TABLE_FAMILY, TABLE_NAME], "").map(Some)
}
