//! Writing the agent's own small files safely: whole or not at all, never through a link.
//! Used by the cluster files here and by the capsules' /etc files in `service`.
//!
//! This layer imports only `wire`; it never names a service.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `path` whole or not at all: a new temporary file beside it (`O_EXCL|O_NOFOLLOW`, so a
/// link planted at the temporary name is refused, not followed; created with `mode`), synced
/// when `durable`, then a rename over `path` (which replaces a link there instead of writing
/// through it).
pub fn replace_new(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)
}
