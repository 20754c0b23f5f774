//! The per-capsule `/etc` files of a bridge capsule (`hosts`, `hostname`, `resolv.conf`),
//! bound over the image's: written whole, never through a link planted at their paths.
//!
//! Part of the service layer; imports only the node layer's whole-file writer.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::node::files::replace_new;

/// The files a capsule on a bridge network gets in `dir` (bound over `/etc/hosts`,
/// `/etc/hostname`, `/etc/resolv.conf`): its name and address, and the host's resolvers
/// unless they are loopback addresses (unreachable from the capsule; then public ones are
/// not guessed: the file names none).
pub fn write_etc_files(
    dir: &Path,
    hostname: &str,
    name: &str,
    ip: Option<Ipv4Addr>,
) -> Result<Vec<(PathBuf, &'static str)>, std::io::Error> {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match ip {
        Some(ip) => hosts.push_str(&format!("{ip}\t{hostname} {name}\n")),
        None => hosts.push_str(&format!("127.0.1.1\t{hostname} {name}\n")),
    }
    let resolv = resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let files = [
        ("hosts", hosts, "/etc/hosts"),
        ("hostname", format!("{hostname}\n"), "/etc/hostname"),
        ("resolv.conf", resolv, "/etc/resolv.conf"),
    ];
    let mut out = Vec::new();
    for (file, text, target) in files {
        let p = dir.join(file);
        replace_new(&p, text.as_bytes(), 0o644, false)?;
        out.push((p, target));
    }
    Ok(out)
}

/// The capsule's `resolv.conf` from the host's: loopback nameservers dropped (a capsule
/// cannot reach the host's 127.0.0.53), everything else kept.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    for line in host.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("nameserver") {
            let addr = rest.trim();
            if addr.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback()) || addr == "::1" {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_drops_loopback_nameservers_only() {
        let host = "search lan\nnameserver 127.0.0.53\nnameserver 192.168.1.1\nnameserver ::1\noptions edns0\n";
        let got = resolv_conf(host);
        assert_eq!(got, "search lan\nnameserver 192.168.1.1\noptions edns0\n");
    }

    #[test]
    fn etc_files_replace_a_planted_link_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "host file\n").unwrap_or_else(|e| panic!("{e}"));
        let capsule = dir.path().join("capsule");
        std::fs::create_dir(&capsule).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&victim, capsule.join("hosts"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&victim, capsule.join("hostname.tmp"))
            .unwrap_or_else(|e| panic!("{e}"));
        write_etc_files(&capsule, "box", "web", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::read_to_string(&victim).ok().as_deref(),
            Some("host file\n")
        );
        let md = std::fs::symlink_metadata(capsule.join("hosts")).unwrap_or_else(|e| panic!("{e}"));
        assert!(md.file_type().is_file());
        assert_eq!(
            std::fs::read_to_string(capsule.join("hostname"))
                .ok()
                .as_deref(),
            Some("box\n")
        );
        assert!(!capsule.join("hostname.tmp").exists());
    }

    #[test]
    fn etc_files_name_the_capsule() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_etc_files(
            dir.path(),
            "abc123",
            "web",
            Some("10.88.0.2".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(files.len(), 3);
        let hosts = std::fs::read_to_string(dir.path().join("hosts")).unwrap();
        assert!(hosts.contains("10.88.0.2\tabc123 web"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "abc123\n"
        );
    }
}
