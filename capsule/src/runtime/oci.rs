//! A capsule spec as an OCI runtime-spec bundle (`config.json`), so `runc run` (or any OCI
//! runtime) can start the same capsule: Bolt's `--runtime runc` path.
//!
//! OCI runtimes do not mount overlay roots themselves: [`mount_rootfs`] mounts the overlay on
//! `root.path` in the host mount namespace for them (and unmounts it when dropped).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::seccomp::{self, Action, ArgRule};
use super::spec::{CapsuleSpec, Mount, NetworkMode, CPU_PERIOD_US};
use crate::sys::{LinuxSyscall, Syscall};

/// Errors of the OCI conversion.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] super::spec::SpecError),
    /// The generated document does not fit the OCI types.
    #[error("build the oci config: {0}")]
    Build(#[source] serde_json::Error),
    /// Writing the bundle failed.
    #[error("write bundle {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Mounting the overlay for an external runtime failed.
    #[error("mount the overlay on {path}: {errno}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// A path holds a NUL byte.
    #[error("path holds a NUL byte: {0}")]
    Nul(PathBuf),
}

/// The OCI seccomp section equivalent to Bolt's filter for a capsule with `cap_mask`
/// (libseccomp builds its own BPF from it): docker's default profile, with the names this
/// architecture lacks left out.
fn seccomp_json(cap_mask: u64) -> Value {
    let mut allowed = Vec::new();
    let mut syscalls = Vec::new();
    for (name, action) in seccomp::actions(cap_mask) {
        if seccomp::table::number(name).is_none() {
            continue;
        }
        match action {
            Action::Allow => allowed.push(name),
            Action::Errno(e) => {
                syscalls.push(json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": e}))
            }
            Action::Check(rule) => syscalls.extend(seccomp_rule_json(name, rule)),
        }
    }
    syscalls.insert(0, json!({"names": allowed, "action": "SCMP_ACT_ALLOW"}));
    let arch = if cfg!(target_arch = "aarch64") {
        "SCMP_ARCH_AARCH64"
    } else {
        "SCMP_ARCH_X86_64"
    };
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": seccomp::DEFAULT_ERRNO,
        "architectures": [arch],
        "syscalls": syscalls,
    })
}

/// The OCI rules allowing `name` when `rule` holds (libseccomp ORs rules, ANDs one rule's args).
fn seccomp_rule_json(name: &str, rule: ArgRule) -> Vec<Value> {
    let allow = |arg: u8, op: &str, value: u64, two: u64| {
        json!({
            "names": [name],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": arg, "value": value, "valueTwo": two, "op": op}],
        })
    };
    match rule {
        ArgRule::OneOf { arg, values } => values
            .iter()
            .map(|v| allow(arg, "SCMP_CMP_EQ", u64::from(*v), 0))
            .collect(),
        ArgRule::NoneOf { arg, values } => {
            let mut refused: Vec<u64> = values.iter().map(|v| u64::from(*v)).collect();
            refused.sort_unstable();
            refused.dedup();
            // Below the first, each value between two refused ones, above the last.
            let mut out = Vec::new();
            let mut next = 0u64;
            for v in &refused {
                if next == 0 && *v > 0 {
                    out.push(allow(arg, "SCMP_CMP_LT", *v, 0));
                } else {
                    out.extend((next..*v).map(|x| allow(arg, "SCMP_CMP_EQ", x, 0)));
                }
                next = v + 1;
            }
            match refused.last() {
                Some(last) => out.push(allow(arg, "SCMP_CMP_GT", *last, 0)),
                None => out.push(json!({"names": [name], "action": "SCMP_ACT_ALLOW"})),
            }
            out
        }
        ArgRule::NoBits { arg, mask } => {
            vec![allow(arg, "SCMP_CMP_MASKED_EQ", u64::from(mask), 0)]
        }
    }
}

/// The OCI config for a capsule.
pub fn to_oci(spec: &CapsuleSpec) -> Result<oci_spec::runtime::Spec, OciError> {
    spec.validate()?;
    let caps: Vec<String> = spec
        .capabilities
        .iter()
        .map(|c| {
            let u = c.to_ascii_uppercase();
            if u.starts_with("CAP_") {
                u
            } else {
                format!("CAP_{u}")
            }
        })
        .collect();
    let rlimits: Vec<Value> = spec
        .rlimits
        .iter()
        .map(|r| json!({"type": r.kind.name(), "soft": r.soft, "hard": r.hard}))
        .collect();
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    match &spec.network {
        NetworkMode::None => namespaces.push(json!({"type": "network"})),
        NetworkMode::Join(p) => namespaces.push(json!({"type": "network", "path": p})),
        NetworkMode::Host => {}
    }
    let r = &spec.resources;
    let mut resources = serde_json::Map::new();
    if let Some(m) = r.memory_bytes {
        resources.insert("memory".into(), json!({"limit": m, "swap": m}));
    }
    let mut cpu = serde_json::Map::new();
    if let Some(q) = r.cpu_quota_us() {
        cpu.insert("quota".into(), json!(q));
        cpu.insert("period".into(), json!(CPU_PERIOD_US));
    }
    if let Some(s) = r.cpu_shares() {
        cpu.insert("shares".into(), json!(s));
    }
    if !cpu.is_empty() {
        resources.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(p) = r.pids_limit {
        resources.insert("pids".into(), json!({"limit": p}));
    }
    // Deny all, then the granted devices (runc adds its defaults itself).
    let mut device_rules = vec![json!({"allow": false, "access": "rwm"})];
    let mut devices = Vec::new();
    for d in &spec.devices {
        let kind = d.kind.letter().to_string();
        device_rules.push(json!({"allow": true, "type": kind, "major": d.major,
            "minor": d.minor, "access": super::devices::access_letters(d.access)}));
        devices.push(
            json!({"path": d.path, "type": kind, "major": d.major, "minor": d.minor,
            "fileMode": d.mode, "uid": 0, "gid": 0}),
        );
    }
    resources.insert("devices".into(), Value::Array(device_rules));
    let mut linux = json!({
        "resources": resources,
        "cgroupsPath": format!("/{}/{}", super::cgroup::BOLT_PARENT, spec.id),
        "namespaces": namespaces,
        "maskedPaths": spec.masked_paths,
        "readonlyPaths": spec.readonly_paths,
    });
    if !devices.is_empty() {
        linux["devices"] = Value::Array(devices);
    }
    if spec.seccomp {
        linux["seccomp"] = seccomp_json(spec.capability_mask()?);
    }
    let mut mounts = json!([
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]);
    if let Some(list) = mounts.as_array_mut() {
        list.extend(spec.mounts.iter().map(mount_json));
    }
    let doc = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.user.uid, "gid": spec.user.gid, "additionalGids": spec.additional_gids},
            "args": spec.args,
            "env": spec.effective_env(),
            "cwd": spec.workdir,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": [], "ambient": [],
            },
            "rlimits": rlimits,
            "noNewPrivileges": spec.no_new_privileges,
        },
        "root": {"path": spec.rootfs.target, "readonly": spec.readonly_rootfs},
        "hostname": spec.effective_hostname(),
        "mounts": mounts,
        "linux": linux,
    });
    serde_json::from_value(doc).map_err(OciError::Build)
}

/// One of the spec's extra mounts as an OCI mount (a bind is `rbind`, private, and `ro`
/// when asked; a tmpfs is `nosuid,nodev`, `noexec` unless asked otherwise).
fn mount_json(m: &Mount) -> Value {
    match m {
        Mount::Bind {
            source,
            target,
            readonly,
        } => json!({
            "destination": target, "type": "bind", "source": source,
            "options": ["rbind", "rprivate", if *readonly { "ro" } else { "rw" }],
        }),
        Mount::Tmpfs { target, options } => {
            let mut opts = vec!["nosuid".to_owned(), "nodev".to_owned()];
            if !options.exec {
                opts.push("noexec".into());
            }
            if options.readonly {
                opts.push("ro".into());
            }
            opts.extend(
                options
                    .data()
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(str::to_owned),
            );
            json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts})
        }
    }
}

/// Writes `dir/config.json` for the spec; returns its path.
pub fn write_bundle(spec: &CapsuleSpec, dir: &Path) -> Result<PathBuf, OciError> {
    let config = to_oci(spec)?;
    let path = dir.join("config.json");
    let err = |source| OciError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let text = serde_json::to_vec_pretty(&config).map_err(OciError::Build)?;
    std::fs::write(&path, text).map_err(err)?;
    Ok(path)
}

/// An overlay mounted on `root.path` in the host mount namespace, for an external runtime;
/// unmounted (lazily) when dropped.
#[derive(Debug)]
pub struct HostRootfs {
    target: CString,
    path: PathBuf,
}

impl HostRootfs {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostRootfs {
    fn drop(&mut self) {
        let _ = LinuxSyscall.umount2(&self.target, libc::MNT_DETACH);
    }
}

/// Mounts the spec's overlay on its target in the host mount namespace.
pub fn mount_rootfs(rootfs: &super::spec::Rootfs) -> Result<HostRootfs, OciError> {
    rootfs.prepare().map_err(|source| OciError::Write {
        path: rootfs.target.clone(),
        source,
    })?;
    let target = CString::new(rootfs.target.as_os_str().as_bytes())
        .map_err(|_| OciError::Nul(rootfs.target.clone()))?;
    let data =
        CString::new(rootfs.overlay_options()).map_err(|_| OciError::Nul(rootfs.target.clone()))?;
    LinuxSyscall
        .mount(Some(c"overlay"), &target, Some(c"overlay"), 0, Some(&data))
        .map_err(|errno| OciError::Mount {
            path: rootfs.target.clone(),
            errno,
        })?;
    Ok(HostRootfs {
        target,
        path: rootfs.target.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::spec::Rootfs;

    #[test]
    fn config_carries_the_spec() {
        let rootfs = Rootfs::in_dir(vec!["/l".into()], Path::new("/c"));
        let mut spec = CapsuleSpec::new(
            "oci1",
            rootfs,
            vec!["sh".into(), "-c".into(), "true".into()],
        );
        spec.resources.memory_bytes = Some(1 << 26);
        spec.resources.pids_limit = Some(7);
        spec.hostname = Some("box".into());
        let oci = to_oci(&spec).unwrap();
        assert_eq!(oci.hostname().as_deref(), Some("box"));
        assert_eq!(oci.root().as_ref().unwrap().path(), Path::new("/c/rootfs"));
        let process = oci.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap()[0], "sh");
        assert!(process.no_new_privileges().unwrap());
        let linux = oci.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/bolt/oci1"))
        );
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(1 << 26));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 7);
        let ns = linux.namespaces().as_ref().unwrap();
        assert_eq!(ns.len(), 6);
        assert!(linux.seccomp().is_some());
        assert_eq!(linux.masked_paths().as_ref().unwrap().len(), 11);
    }

    #[test]
    fn extra_mounts_follow_the_fixed_ones() {
        let rootfs = Rootfs::in_dir(vec!["/l".into()], Path::new("/c"));
        let mut spec = CapsuleSpec::new("oci3", rootfs, vec!["true".into()]);
        spec.mounts = vec![
            Mount::Bind {
                source: "/srv/v".into(),
                target: "/data".into(),
                readonly: true,
            },
            Mount::Tmpfs {
                target: "/run".into(),
                options: crate::runtime::TmpfsOptions {
                    size_bytes: Some(4096),
                    ..Default::default()
                },
            },
        ];
        let oci = to_oci(&spec).unwrap();
        let mounts = oci.mounts().as_ref().unwrap();
        assert_eq!(mounts.len(), 8);
        let bind = &mounts[6];
        assert_eq!(bind.destination(), Path::new("/data"));
        assert_eq!(bind.source().as_deref(), Some(Path::new("/srv/v")));
        assert!(bind.options().as_ref().unwrap().contains(&"ro".to_owned()));
        let tmpfs = &mounts[7];
        assert_eq!(tmpfs.typ().as_deref(), Some("tmpfs"));
        let opts = tmpfs.options().as_ref().unwrap();
        assert!(opts.contains(&"noexec".to_owned()) && opts.contains(&"size=4096".to_owned()));
    }

    #[test]
    fn host_network_has_no_network_namespace() {
        let rootfs = Rootfs::in_dir(vec!["/l".into()], Path::new("/c"));
        let mut spec = CapsuleSpec::new("oci2", rootfs, vec!["true".into()]);
        spec.network = NetworkMode::Host;
        let oci = to_oci(&spec).unwrap();
        let ns = oci.linux().as_ref().unwrap().namespaces().as_ref().unwrap();
        assert_eq!(ns.len(), 5);
    }

    /// One rule: action, errnoRet, and the first argument's op and value.
    type Rule = (String, Option<i64>, Option<String>, Option<u64>);

    /// The rules of `name` in the profile.
    fn rules_of(profile: &Value, name: &str) -> Vec<Rule> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .map(|r| {
                (
                    r["action"].as_str().unwrap().to_owned(),
                    r["errnoRet"].as_i64(),
                    r["args"][0]["op"].as_str().map(str::to_owned),
                    r["args"][0]["value"].as_u64(),
                )
            })
            .collect()
    }

    #[test]
    fn the_bundle_carries_dockers_allow_list() {
        let p = seccomp_json(seccomp::default_cap_mask());
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], libc::EPERM);
        let allow =
            |name: &str| rules_of(&p, name) == [("SCMP_ACT_ALLOW".into(), None, None, None)];
        assert!(allow("read") && allow("execve") && allow("chroot"));
        assert!(rules_of(&p, "kexec_load").is_empty());
        assert!(rules_of(&p, "mount").is_empty());
        // Names this architecture lacks are left out.
        assert!(rules_of(&p, "socketcall").is_empty());
        let allow_if = |op: &str, v: u64| {
            (
                "SCMP_ACT_ALLOW".to_owned(),
                None,
                Some(op.to_owned()),
                Some(v),
            )
        };
        assert_eq!(
            rules_of(&p, "socket"),
            [
                allow_if("SCMP_CMP_LT", 38),
                allow_if("SCMP_CMP_EQ", 39),
                allow_if("SCMP_CMP_GT", 40)
            ]
        );
        assert_eq!(rules_of(&p, "personality").len(), 5);
        assert_eq!(
            rules_of(&p, "clone"),
            [allow_if("SCMP_CMP_MASKED_EQ", 0x7e02_0000)]
        );
        assert_eq!(
            rules_of(&p, "clone3"),
            [(
                "SCMP_ACT_ERRNO".to_owned(),
                Some(i64::from(libc::ENOSYS)),
                None,
                None
            )]
        );
        // CAP_SYS_ADMIN allows clone, clone3 and mount outright.
        let admin = seccomp_json(1 << 21);
        assert_eq!(rules_of(&admin, "clone").len(), 1);
        assert_eq!(rules_of(&admin, "clone")[0].2, None);
        assert_eq!(rules_of(&admin, "mount").len(), 1);
    }
}
