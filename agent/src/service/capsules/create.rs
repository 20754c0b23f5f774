//! Creating a capsule: checking the request, resolving its image, user, mounts and network,
//! starting its supervisor, and recording it only once it runs. On any error nothing is left.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bolt_capsule::net::PortSpec;
use bolt_capsule::runtime::Hierarchy;
use bolt_capsule::storage::mounts::{TmpfsSpec, VolumeSource, VolumeSpec};
use bolt_events::payload::{CapsuleEvent, CapsuleSpec as EventSpec};
use bolt_events::Payload;
use bolt_state::{decide, Command, DecideError};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::service::capsules::lifecycle::Watch;
use crate::service::capsules::policy::{
    merge_env, name_from, random_hex, resolve_command, resolve_user,
};
use crate::service::capsules::{io_err, net_err, plock, CapsuleError, Capsules};
use crate::service::networks::{write_etc_files, Networks, Prepared};
use crate::shim::mounts::MountConfig;
use crate::shim::{Report, SupervisorConfig, SUPERVISOR_LOG};
use crate::wire::capsules::{
    one_line, short, CapsuleView, CreateRequest, RestartPolicy, LABEL_AUTO_REMOVE, LABEL_DEVICES,
    LABEL_STDIN, LABEL_TTY, LABEL_WARNINGS,
};
use crate::wire::networks::{plan, NetworkChoice};
use crate::wire::parse::valid_name;

/// Why a rootless agent refuses `--network bridge`.
pub const ROOTLESS_BRIDGE: &str =
    "bridge networking needs root: a rootless agent runs capsules with --network none or host";

/// The warning of a rootless agent (no cgroup controllers are delegated to users, so limits
/// cannot be applied) for the limit flags given, like podman's; `None` without any.
pub fn rootless_limits_warning(memory: bool, cpus: bool, pids: bool) -> Option<String> {
    let flags: Vec<&str> = [
        (memory, "--memory"),
        (cpus, "--cpus"),
        (pids, "--pids-limit"),
    ]
    .into_iter()
    .filter_map(|(given, flag)| given.then_some(flag))
    .collect();
    (!flags.is_empty()).then(|| {
        format!(
            "rootless: no cgroup controllers delegated; {} ignored",
            flags.join(", ")
        )
    })
}

/// How long a start may take before the supervisor is called hung (a guard, not a timing).
const START_PATIENCE: Duration = Duration::from_secs(120);

/// An image ready to run: its layers and the parts of its config a capsule uses.
#[derive(Debug, Clone)]
pub(super) struct ResolvedImage {
    pub(super) reference: String,
    pub(super) digest: String,
    pub(super) lower: Vec<PathBuf>,
    pub(super) env: Vec<String>,
    pub(super) entrypoint: Vec<String>,
    pub(super) cmd: Vec<String>,
    pub(super) workdir: Option<String>,
    pub(super) user: Option<String>,
}

/// Parses every `-v` and `--tmpfs` spec (before anything is created); an error names the spec.
pub fn parse_mount_specs(
    volumes: &[String],
    tmpfs: &[String],
) -> Result<(Vec<VolumeSpec>, Vec<TmpfsSpec>), CapsuleError> {
    let bad =
        |e: bolt_capsule::storage::mounts::MountSpecError| CapsuleError::BadRequest(e.to_string());
    let v = volumes
        .iter()
        .map(|s| VolumeSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let t = tmpfs
        .iter()
        .map(|s| TmpfsSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    bolt_capsule::storage::mounts::check_targets(&v, &t).map_err(bad)?;
    Ok((v, t))
}

/// Releases a reserved name when dropped.
struct NameReservation<'a> {
    caps: &'a Capsules,
    name: String,
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        plock(&self.caps.pending_names).remove(&self.name);
    }
}

/// Removes a half-made capsule directory when dropped, unless disarmed.
struct DirGuard {
    path: Option<PathBuf>,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// A request that passed every check that needs neither the image nor the host.
struct Checked {
    policy: RestartPolicy,
    network: String,
    net_choice: NetworkChoice,
    port_specs: Vec<PortSpec>,
    rootless: bool,
    volumes: Vec<VolumeSpec>,
    tmpfs: Vec<TmpfsSpec>,
    devices: Vec<bolt_capsule::runtime::devices::Device>,
}

/// What the image and the request resolve to: the process to run and as whom.
struct Process {
    image: ResolvedImage,
    argv: Vec<String>,
    env: Vec<String>,
    workdir: String,
    /// The user as asked (`-u`, else the image's), recorded in the event.
    user_spec: Option<String>,
    uid: u32,
    gid: u32,
    extra_gids: Vec<u32>,
}

/// A bridge network's attachment, made for a capsule that is not recorded yet.
type PreparedNet = Option<(Arc<Networks>, Prepared)>;

/// Checks everything in a create request that can be checked before anything is resolved or
/// made (docker's messages where it has one).
fn check_request(req: &CreateRequest, default_network: &str) -> Result<Checked, CapsuleError> {
    let bad = CapsuleError::BadRequest;
    let policy: RestartPolicy = req
        .restart
        .as_deref()
        .unwrap_or("no")
        .parse()
        .map_err(bad)?;
    if req.auto_remove && policy != RestartPolicy::No {
        return Err(bad("conflicting options: --restart and --rm".to_owned()));
    }
    let network = req
        .network
        .clone()
        .unwrap_or_else(|| default_network.to_owned());
    let (net_choice, port_specs) = plan(&network, &req.ports).map_err(bad)?;
    let rootless = !nix::unistd::geteuid().is_root();
    if rootless && matches!(net_choice, NetworkChoice::Bridge(_)) {
        return Err(bad(ROOTLESS_BRIDGE.to_owned()));
    }
    if let Some(name) = &req.name {
        if !valid_name(name) {
            return Err(bad(format!(
                "invalid name {name:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*"
            )));
        }
    }
    for e in &req.env {
        if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(bad(format!(
                "invalid environment entry {e:?}: expected KEY=VALUE"
            )));
        }
    }
    if req.memory_bytes.is_some_and(|m| m < 6 << 20) {
        return Err(bad("minimum memory limit allowed is 6MB".into()));
    }
    if req.cpu_millis == Some(0) || req.pids_limit == Some(0) {
        return Err(bad("cpu and pids limits must be positive".into()));
    }
    if let Some(h) = &req.hostname {
        if !valid_hostname(h) {
            return Err(bad(format!(
                "invalid hostname {h:?}: use letters, digits, '-' and '.', at most 64"
            )));
        }
    }
    if let Some(w) = &req.workdir {
        if !w.starts_with('/') {
            return Err(bad(format!("the working directory {w:?} is not absolute")));
        }
    }
    let (volumes, tmpfs) = parse_mount_specs(&req.volumes, &req.tmpfs)?;
    // `--device`: the host node is read now; the supervisor makes it in /dev and the
    // capsule's cgroup allows it (docs/runtime.md, "Devices").
    let devices = req
        .devices
        .iter()
        .map(|d| bolt_capsule::runtime::devices::Device::from_spec(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    Ok(Checked {
        policy,
        network,
        net_choice,
        port_specs,
        rootless,
        volumes,
        tmpfs,
        devices,
    })
}

/// A hostname the capsule's `/etc/hostname` and `/etc/hosts` can hold: RFC 1123 labels
/// (letters, digits, `-`), dot-separated, at most 64 bytes; no whitespace, no newline, no `/`.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The labels recorded with the capsule: `--rm`, `-t`, `-i` and a rootless agent's warning.
fn labels_of(req: &CreateRequest, rootless: bool) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::new();
    if req.auto_remove {
        labels.insert(LABEL_AUTO_REMOVE.to_owned(), "true".to_owned());
    }
    if req.tty {
        labels.insert(LABEL_TTY.to_owned(), "true".to_owned());
    }
    if req.stdin {
        labels.insert(LABEL_STDIN.to_owned(), "true".to_owned());
    }
    if !req.devices.is_empty() {
        labels.insert(LABEL_DEVICES.to_owned(), req.devices.join(" "));
    }
    let limits_ignored = rootless
        .then(|| {
            rootless_limits_warning(
                req.memory_bytes.is_some(),
                req.cpu_millis.is_some(),
                req.pids_limit.is_some(),
            )
        })
        .flatten();
    if let Some(w) = limits_ignored {
        tracing::warn!("{w}");
        labels.insert(LABEL_WARNINGS.to_owned(), w);
    }
    labels
}

/// What `capsule.created` records and what the supervisor runs, from one request (mounts are
/// filled in once resolved).
fn specs_of(
    id: &str,
    req: &CreateRequest,
    checked: &Checked,
    process: Process,
) -> (EventSpec, SupervisorConfig) {
    let event = EventSpec {
        image: process.image.reference.clone(),
        image_digest: process.image.digest.clone(),
        command: process.argv.clone(),
        env: process.env.clone(),
        workdir: Some(process.workdir.clone()),
        user: process.user_spec.clone(),
        hostname: req.hostname.clone(),
        network: checked.network.clone(),
        memory_bytes: req.memory_bytes,
        cpu_millis: req.cpu_millis,
        pids_limit: req.pids_limit,
        restart: checked.policy.to_string(),
        ports: checked.port_specs.iter().map(ToString::to_string).collect(),
        // Set once the mounts are resolved (anonymous volumes get their names).
        mounts: Vec::new(),
        labels: labels_of(req, checked.rootless),
    };
    let cfg = SupervisorConfig {
        id: id.to_owned(),
        lower: process.image.lower,
        args: process.argv,
        env: process.env,
        workdir: process.workdir,
        uid: process.uid,
        gid: process.gid,
        additional_gids: process.extra_gids,
        hostname: req.hostname.clone(),
        network: checked.network.clone(),
        memory_bytes: req.memory_bytes,
        cpu_millis: req.cpu_millis,
        pids_limit: req.pids_limit,
        tty: req.tty,
        stdin: req.stdin,
        attach_wait: req.attach,
        log_max_bytes: 10 << 20,
        log_keep: 3,
        netns: None,
        mounts: Vec::new(),
        devices: checked.devices.clone(),
    };
    (event, cfg)
}

impl Capsules {
    // --- create ------------------------------------------------------------------------------

    /// Creates and starts a capsule. On any error nothing is left: no event, no directory,
    /// no cgroup, no process. The steps: check the request, resolve the process from the
    /// image, reserve an id and a name, resolve the mounts, make the directory and writable
    /// layer, attach the network, start the supervisor, and record `capsule.created` with
    /// `capsule.started` only once the capsule runs.
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<CapsuleView, CapsuleError> {
        let checked = check_request(&req, &self.node.options().default_network)?;
        let t0 = std::time::Instant::now();
        let process = self.resolve_process(&req).await?;
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "create: image ready");

        let id = random_hex()?;
        let name = self.reserve_name(&id, req.name.clone()).await?;
        let (mut event_spec, mut cfg) = specs_of(&id, &req, &checked, process);
        let (mounts, recorded) = self
            .resolve_mounts(&checked.volumes, &checked.tmpfs)
            .await?;
        cfg.mounts = mounts;
        event_spec.mounts = recorded;

        let mut guard = self.make_dir(&id, &cfg.lower).await?;
        let prepared = self.attach_network(&id, &checked).await?;
        let host = req.hostname.clone().unwrap_or_else(|| short(&id));
        let started = self
            .start_in_dir(
                &id,
                &name.name,
                &host,
                &mut cfg,
                prepared.as_ref().map(|(_, p)| p),
            )
            .await;
        let (pid, watch) = match started {
            Ok(r) => r,
            Err(e) => {
                if let Some((nets, p)) = prepared {
                    nets.abandon(&id, p).await;
                }
                return Err(e);
            }
        };
        tracing::debug!(
            ms = t0.elapsed().as_secs_f64() * 1e3,
            pid,
            "create: capsule started"
        );
        if let Err(e) = self.record_created(&id, &name.name, event_spec, pid).await {
            self.undo_start(&id, pid, watch, prepared).await;
            return Err(e);
        }
        drop(prepared);
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "create: recorded");
        guard.path = None;
        drop(name);
        self.spawn_watch(id.clone(), watch);
        self.view(&id).await
    }

    /// The image (pulled when missing) and what it and the request make of the process:
    /// command, environment, working directory, user and groups.
    async fn resolve_process(&self, req: &CreateRequest) -> Result<Process, CapsuleError> {
        let bad = CapsuleError::BadRequest;
        let image = self.ensure_image(&req.image).await?;
        let argv = resolve_command(
            &image.entrypoint,
            &image.cmd,
            req.entrypoint.as_deref(),
            &req.command,
        );
        if argv.first().is_none_or(String::is_empty) {
            return Err(bad("no command specified".into()));
        }
        let env = merge_env(&image.env, &req.env);
        let workdir = req
            .workdir
            .clone()
            .or_else(|| image.workdir.clone())
            .unwrap_or_else(|| "/".to_owned());
        if !workdir.starts_with('/') {
            return Err(bad(format!(
                "the working directory {workdir:?} is not absolute"
            )));
        }
        let user_spec = req.user.clone().or_else(|| image.user.clone());
        let top_first: Vec<PathBuf> = image.lower.iter().rev().cloned().collect();
        let (user, extra_gids) =
            resolve_user(user_spec.as_deref().unwrap_or(""), &top_first).map_err(bad)?;
        Ok(Process {
            image,
            argv,
            env,
            workdir,
            user_spec,
            uid: user.uid,
            gid: user.gid,
            extra_gids,
        })
    }

    /// The wanted name, or one made from the id, reserved against the state and the other
    /// creates in flight until the returned reservation is dropped.
    async fn reserve_name(
        &self,
        id: &str,
        wanted: Option<String>,
    ) -> Result<NameReservation<'_>, CapsuleError> {
        let _ops = self.ops.lock().await;
        let pending: BTreeSet<String> = plock(&self.pending_names).clone();
        let id_for_name = id.to_owned();
        let name = self
            .state(move |s| -> Result<String, CapsuleError> {
                let free = |n: &str| s.capsule_by_name(n).is_none() && !pending.contains(n);
                match wanted {
                    Some(n) => {
                        if let Some(c) = s.capsule_by_name(&n) {
                            return Err(CapsuleError::Conflict(format!(
                                "the name {n} is already in use by capsule {}",
                                short(&c.id)
                            )));
                        }
                        if pending.contains(&n) {
                            return Err(CapsuleError::Conflict(format!(
                                "the name {n} is being used by a capsule that is starting"
                            )));
                        }
                        Ok(n)
                    }
                    None => Ok((0..1000)
                        .map(|a| name_from(&id_for_name, a))
                        .find(|n| free(n))
                        .unwrap_or_else(|| id_for_name.clone())),
                }
            })
            .await??;
        plock(&self.pending_names).insert(name.clone());
        Ok(NameReservation { caps: self, name })
    }

    /// The capsule's directory and its writable layer: `dir/layer/{upper,work}`, one btrfs
    /// subvolume when the root is on btrfs (snapshots); the supervisor mounts the overlay from
    /// it. Removed again when the guard drops armed.
    async fn make_dir(&self, id: &str, lower: &[PathBuf]) -> Result<DirGuard, CapsuleError> {
        let dir = self.dir_of(id);
        std::fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        let guard = DirGuard {
            path: Some(dir.clone()),
        };
        let layers = self.storage.layers();
        let (idc, lower) = (id.to_owned(), lower.to_vec());
        self.blocking(move || layers.create(&idc, lower))
            .await?
            .map_err(|e| CapsuleError::Task(e.to_string()))?;
        Ok(guard)
    }

    /// Bridge networks: address (an event), namespace, veth, ports; the caller abandons them
    /// when the create fails later.
    async fn attach_network(
        &self,
        id: &str,
        checked: &Checked,
    ) -> Result<PreparedNet, CapsuleError> {
        let NetworkChoice::Bridge(net) = &checked.net_choice else {
            return Ok(None);
        };
        let nets = self.networks();
        let p = nets
            .prepare(id, net, checked.port_specs.clone())
            .await
            .map_err(|e| net_err(&e))?;
        Ok(Some((nets, p)))
    }

    /// Writes the per-capsule `/etc` files for a bridge capsule and `config.json`, then starts
    /// the supervisor.
    async fn start_in_dir(
        self: &Arc<Self>,
        id: &str,
        name: &str,
        host: &str,
        cfg: &mut SupervisorConfig,
        prepared: Option<&Prepared>,
    ) -> Result<(i32, Watch), CapsuleError> {
        let dir = self.dir_of(id);
        if let Some(p) = prepared {
            let files = write_etc_files(&dir, host, name, Some(p.attachment.ip))
                .map_err(io_err("write /etc files in", &dir))?;
            cfg.netns = Some(p.join_path());
            for (source, target) in files {
                cfg.mounts.push(MountConfig::Bind {
                    source,
                    target: target.to_owned(),
                    readonly: false,
                });
            }
        }
        cfg.store(&dir)
            .map_err(|e| CapsuleError::Task(e.to_string()))?;
        self.start_supervisor(id).await
    }

    /// Records `capsule.created` and `capsule.started` in one batch (decide cannot see a
    /// capsule created in the same batch, so the start is added after it).
    async fn record_created(
        &self,
        id: &str,
        name: &str,
        spec: EventSpec,
        pid: i32,
    ) -> Result<(), CapsuleError> {
        let _ops = self.ops.lock().await;
        let create = Command::CreateCapsule {
            id: id.to_owned(),
            name: name.to_owned(),
            spec,
        };
        let started = Payload::Capsule(CapsuleEvent::Started {
            id: id.to_owned(),
            pid: pid as u32,
        });
        let mut payloads = self.state(move |s| decide(s, create)).await??;
        payloads.push(started);
        self.append(payloads).await
    }

    /// A started capsule whose create was not recorded must not outlive it: kill it, reap its
    /// supervisor, remove its cgroup and give its network attachment back.
    async fn undo_start(&self, id: &str, pid: i32, watch: Watch, prepared: PreparedNet) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        if let Watch::Child(mut child, _) = watch {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        if let Ok(h) = Hierarchy::detect() {
            let _ = h.open(id).remove();
        }
        if let Some((nets, p)) = prepared {
            nets.abandon(id, p).await;
        }
    }

    /// Resolves `-v` and `--tmpfs` specs to supervisor mounts: creates missing named volumes
    /// (recorded as `volume.created` events when the state does not know them yet). Also gives
    /// the specs to record in `capsule.created`: an anonymous volume as `NAME:/dst`, so its use
    /// is seen by `volume rm` and `prune`.
    async fn resolve_mounts(
        &self,
        volumes: &[VolumeSpec],
        tmpfs: &[TmpfsSpec],
    ) -> Result<(Vec<MountConfig>, Vec<String>), CapsuleError> {
        if volumes.is_empty() && tmpfs.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let storage = self.storage.clone();
        let (v, t) = (volumes.to_vec(), tmpfs.to_vec());
        let resolved = self
            .blocking(move || storage.resolve_mounts(&v, &t, &Default::default()))
            .await?
            .map_err(|e| CapsuleError::BadRequest(e.to_string()))?;
        // Every named volume the capsule uses must be in the state (created here or earlier
        // on disk without an event).
        let names: Vec<String> = volumes
            .iter()
            .filter_map(|v| match &v.source {
                VolumeSource::Named(n) => Some(n.clone()),
                _ => None,
            })
            .chain(resolved.created.iter().map(|c| c.name.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !names.is_empty() {
            let store = self.storage.volumes();
            let _ops = self.ops.lock().await;
            let payloads = self
                .state(move |s| -> Result<Vec<Payload>, DecideError> {
                    let mut out = Vec::new();
                    for n in names {
                        if s.volumes.contains_key(&n) {
                            continue;
                        }
                        let (driver, labels) = match store.get(&n) {
                            Ok(v) => (v.driver, v.labels),
                            Err(_) => (
                                bolt_capsule::storage::volume::DRIVER.to_owned(),
                                Default::default(),
                            ),
                        };
                        out.extend(decide(
                            s,
                            Command::CreateVolume {
                                name: n,
                                driver,
                                labels,
                            },
                        )?);
                    }
                    Ok(out)
                })
                .await??;
            self.append(payloads).await?;
        }
        let mut out = Vec::with_capacity(resolved.mounts.len());
        let mut recorded = Vec::with_capacity(resolved.mounts.len());
        // The runtime mounts come in the order of the specs: volumes, then tmpfs.
        for (spec, mount) in volumes.iter().zip(resolved.mounts.iter()) {
            if let bolt_capsule::runtime::Mount::Bind { source, .. } = mount {
                let anonymous = matches!(spec.source, VolumeSource::Anonymous);
                match resolved.created.iter().find(|c| &c.mountpoint == source) {
                    Some(vol) if anonymous => recorded.push(
                        VolumeSpec {
                            source: VolumeSource::Named(vol.name.clone()),
                            ..spec.clone()
                        }
                        .to_string(),
                    ),
                    _ => recorded.push(spec.to_string()),
                }
                out.push(MountConfig::Bind {
                    source: source.clone(),
                    target: spec.target.clone(),
                    readonly: spec.readonly,
                });
            }
        }
        for t in tmpfs {
            out.push(MountConfig::Tmpfs {
                spec: t.to_string(),
            });
            recorded.push(t.to_string());
        }
        Ok((out, recorded))
    }

    /// Spawns `bolt supervise DIR` and waits for its first report. On a start failure the
    /// supervisor has exited and the error carries docker's exit code.
    pub(super) async fn start_supervisor(&self, id: &str) -> Result<(i32, Watch), CapsuleError> {
        let dir = self.dir_of(id);
        let sup_log = dir.join(SUPERVISOR_LOG);
        let stderr = std::fs::File::create(&sup_log).map_err(io_err("create", &sup_log))?;
        // The agent's own binary; after an upgrade replaced it on disk, the running one.
        let bin = if self.bin.exists() {
            self.bin.as_path()
        } else {
            Path::new("/proc/self/exe")
        };
        let mut child = tokio::process::Command::new(bin)
            .arg("supervise")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(io_err("start the supervisor", bin))?;
        let sup_err = |message: String| CapsuleError::Supervisor {
            id: short(id),
            message,
        };
        let Some(stdout) = child.stdout.take() else {
            return Err(sup_err("no report pipe".into()));
        };
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(START_PATIENCE, reader.read_line(&mut line)).await;
        let report = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str::<Report>(line.trim())
                .map_err(|e| sup_err(format!("unreadable report {line:?}: {e}"))),
            Ok(Ok(_)) => {
                let _ = child.wait().await;
                let log = std::fs::read_to_string(&sup_log).unwrap_or_default();
                Err(sup_err(format!(
                    "exited before it reported: {}",
                    one_line(log.trim())
                )))
            }
            Ok(Err(e)) => Err(sup_err(format!("read its report: {e}"))),
            Err(_) => {
                let _ = child.start_kill();
                Err(sup_err(format!("no report within {START_PATIENCE:?}")))
            }
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                let _ = child.wait().await;
                return Err(e);
            }
        };
        match report {
            Report::Started { pid, .. } => Ok((pid, Watch::Child(child, reader))),
            Report::Failed { error, exit_code } => {
                let _ = child.wait().await;
                Err(CapsuleError::Start {
                    error: one_line(&error),
                    exit_code,
                })
            }
            Report::Exited { .. } => Err(sup_err("reported an exit before a start".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_rfc_1123_labels_without_whitespace() {
        for ok in ["box1", "a-b.example", "A1", &"x".repeat(63)] {
            assert!(valid_hostname(ok), "{ok:?}");
        }
        for bad in [
            "",
            "two\nlines",
            "tab\there",
            "sp ace",
            "-lead",
            "trail-",
            "a..b",
            "a/b",
            "nul\0",
            "under_score",
            &"x".repeat(65),
        ] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_hostname_with_a_newline_is_refused_before_anything_is_made() {
        let req: CreateRequest = serde_json::from_value(serde_json::json!({
            "image": "busybox",
            "hostname": "evil\n10.0.0.1 registry",
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let err = check_request(&req, "none").err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("invalid hostname")),
            "{err:?}"
        );
    }
}
