//! A capsule's life after its start: the watcher that records its exit, restart policies,
//! re-adoption at agent start, and `start`/`stop`/`kill`/`rm`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bolt_capsule::runtime::supervisor::{files, PidRecord};
use bolt_capsule::runtime::{adopt, Adopted, Hierarchy};
use bolt_state::{CapsuleInfo, CapsuleStatus, Command, ExitInfo};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout};

use crate::service::capsules::policy::{restart_at_agent_start, restart_delay, should_restart};
use crate::service::capsules::{
    async_fd, exit_info, io_err, label_on, net_err, CapsuleError, Capsules,
};
use crate::shim::{SupervisorConfig, ATTACH_SOCK};
use crate::wire::capsules::{short, CapsuleView, RestartPolicy, LABEL_AUTO_REMOVE};
use crate::wire::networks::{plan, NetworkChoice};
use crate::wire::time::now_ms;

/// How long `stop` waits for SIGKILL to take effect before it gives up.
const KILL_PATIENCE: Duration = Duration::from_secs(30);

/// The longest `stop` timeout accepted, in seconds (a year): a longer one is refused before
/// anything is recorded or signalled.
pub const MAX_STOP_TIMEOUT: u64 = 365 * 24 * 3600;

/// How the watcher learns that a supervisor is done.
pub(super) enum Watch {
    /// We spawned it: its report pipe and the child to reap.
    Child(Child, BufReader<ChildStdout>),
    /// Adopted after an agent restart: its pid.
    Pid(i32),
}

impl Capsules {
    // --- watching ------------------------------------------------------------------------------

    pub(super) fn spawn_watch(self: &Arc<Self>, id: String, watch: Watch) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.watch(id, watch).await;
        });
    }

    async fn watch(self: Arc<Self>, id: String, watch: Watch) {
        match watch {
            Watch::Child(mut child, mut reader) => {
                // Reports until the pipe closes: the supervisor wrote exit.json, or died.
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            tracing::debug!(capsule = %short(&id), report = line.trim(), "supervisor report")
                        }
                    }
                }
                let auto_remove = self
                    .state({
                        let id = id.clone();
                        move |s| {
                            s.capsules
                                .get(&id)
                                .is_some_and(|c| label_on(&c.spec, LABEL_AUTO_REMOVE))
                        }
                    })
                    .await
                    .unwrap_or(false);
                if auto_remove {
                    // The supervisor may still hand the output to a foreground `bolt run`;
                    // the directory goes once it is done.
                    let _ = child.wait().await;
                    tracing::debug!(capsule = %short(&id), "supervisor exited");
                    self.on_supervisor_done(&id).await;
                } else {
                    self.on_supervisor_done(&id).await;
                    let _ = child.wait().await;
                }
            }
            Watch::Pid(pid) => {
                wait_pid_gone(pid).await;
                self.on_supervisor_done(&id).await;
            }
        }
    }

    /// The supervisor of `id` reported the end or is gone: record how the capsule ended, then
    /// remove it (`--rm`) or apply its restart policy.
    async fn on_supervisor_done(self: &Arc<Self>, id: &str) {
        let dir = self.dir_of(id);
        let adopted = {
            let d = dir.clone();
            self.blocking(move || adopt(&d)).await
        };
        let exit = match adopted {
            Ok(Ok(Adopted::Exited(record))) => exit_info(&record),
            Ok(Ok(Adopted::Running { record, .. })) => {
                // The supervisor died and left its capsule without stdio or a reaper: end it.
                kill_orphan(id, &record);
                ExitInfo {
                    code: None,
                    signal: Some(Signal::SIGKILL as i32),
                    oom: false,
                }
            }
            Ok(Ok(Adopted::Lost(_) | Adopted::NotStarted)) | Ok(Err(_)) | Err(_) => ExitInfo {
                code: None,
                signal: None,
                oom: false,
            },
        };
        if let Err(e) = self.record_exit(id, exit).await {
            tracing::warn!(capsule = %short(id), "record the exit: {e}");
        }
    }

    /// Appends `capsule.exited` (and for `--rm` the removal), then schedules a restart when
    /// the policy says so.
    async fn record_exit(self: &Arc<Self>, id: &str, exit: ExitInfo) -> Result<(), CapsuleError> {
        let (auto_remove, restart) = {
            let _ops = self.ops.lock().await;
            let idc = id.to_owned();
            let info = self.state(move |s| s.capsules.get(&idc).cloned()).await?;
            let Some(info) = info else {
                return Ok(());
            };
            if info.status != CapsuleStatus::Running {
                return Ok(());
            }
            let auto_remove = label_on(&info.spec, LABEL_AUTO_REMOVE);
            let mut cmds = vec![Command::RecordExit {
                id: id.to_owned(),
                code: exit.code,
                signal: exit.signal,
                oom: exit.oom,
            }];
            if auto_remove {
                cmds.push(Command::RemoveCapsule {
                    id: id.to_owned(),
                    force: true,
                });
            }
            self.decide_append(cmds).await?;
            let policy: RestartPolicy = info.spec.restart.parse().unwrap_or_default();
            let restart =
                !auto_remove && should_restart(policy, &exit, info.restarts, info.stop_requested);
            let ran_for = info
                .started
                .map(|h| Duration::from_millis(now_ms().saturating_sub(h.physical_ms())));
            (
                auto_remove,
                restart.then(|| restart_delay(info.restarts, ran_for)),
            )
        };
        tracing::debug!(capsule = %short(id), "exit recorded");
        if auto_remove {
            self.remove_dir(id).await;
        } else if let Some(delay) = restart {
            let me = Arc::clone(self);
            let id = id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Err(e) = me.restart(&id, false).await {
                    tracing::warn!(capsule = %short(&id), "restart: {e}");
                }
            });
        }
        Ok(())
    }

    /// Starts an exited capsule again in its directory (same upper layer), appending
    /// `capsule.started`. `override_stop`: start even after a person's stop (`bolt start`, and
    /// `always` at agent start); a restart its policy scheduled does not.
    async fn restart(self: &Arc<Self>, id: &str, override_stop: bool) -> Result<(), CapsuleError> {
        let _ops = self.ops.lock().await;
        let idc = id.to_owned();
        let Some(info) = self.state(move |s| s.capsules.get(&idc).cloned()).await? else {
            return Ok(());
        };
        if info.status != CapsuleStatus::Exited {
            return Ok(());
        }
        // A person's stop holds until a start that overrides it (`bolt start`, or `always` at
        // agent start); the start's event clears it.
        if info.stop_requested && !override_stop {
            return Ok(());
        }
        let dir = self.dir_of(id);
        for f in [files::PID, files::EXIT, ATTACH_SOCK] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let mut cfg =
            SupervisorConfig::load(&dir).map_err(|e| CapsuleError::Task(e.to_string()))?;
        let prepared = match plan(&info.spec.network, &info.spec.ports) {
            Ok((NetworkChoice::Bridge(net), ports)) => {
                let nets = self.networks();
                let p = nets
                    .prepare(id, &net, ports)
                    .await
                    .map_err(|e| net_err(&e))?;
                cfg.netns = Some(p.join_path());
                Some(p)
            }
            _ => None,
        };
        if cfg.attach_wait || prepared.is_some() {
            cfg.attach_wait = false;
            cfg.store(&dir)
                .map_err(|e| CapsuleError::Task(e.to_string()))?;
        }
        let started = self.start_supervisor(id).await;
        drop(prepared);
        let (pid, watch) = match started {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(capsule = %short(id), "restart failed: {e}");
                return Err(e);
            }
        };
        let started = self
            .decide_one(Command::StartCapsule {
                id: id.to_owned(),
                pid: pid as u32,
            })
            .await;
        match started {
            Ok(()) => {
                self.spawn_watch(id.to_owned(), watch);
                Ok(())
            }
            Err(e) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                Err(e)
            }
        }
    }

    async fn remove_dir(&self, id: &str) {
        // Its veth and published ports (its addresses went with the removal event).
        self.networks.detach(id).await;
        let dir = self.dir_of(id);
        let idc = id.to_owned();
        let layers = self.storage.layers();
        let _ = self
            .blocking(move || {
                if let Ok(h) = Hierarchy::detect() {
                    let _ = h.open(&idc).remove();
                }
                // The layer (a subvolume on btrfs) and the capsule's snapshots.
                if let Err(e) = layers.remove(&idc) {
                    tracing::warn!("remove the layer of {idc}: {e}");
                }
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!("remove {}: {e}", dir.display());
                    }
                }
            })
            .await;
    }

    // --- recovery ------------------------------------------------------------------------------

    /// At agent start: re-adopt the capsules the state says run here, record the exits that
    /// happened while no agent watched, apply restart policies, and clean up directories of
    /// capsules the state does not know (a crash between start and record).
    pub async fn recover(self: &Arc<Self>) -> Result<(), CapsuleError> {
        let me = self.node.node_id();
        let mine: Vec<CapsuleInfo> = self
            .state(move |s| {
                s.capsules
                    .values()
                    .filter(|c| c.node == me && c.status != CapsuleStatus::Removed)
                    .cloned()
                    .collect()
            })
            .await?;
        let known: BTreeSet<String> = mine.iter().map(|c| c.id.clone()).collect();

        // Directories nobody recorded: end what runs there and remove them. Never through a
        // symbolic link: not a `capsules` that is one (its target's directories would go), not
        // an entry that is one (its `pid.json` would name a process to kill).
        let meta = std::fs::symlink_metadata(&self.dir).map_err(io_err("inspect", &self.dir))?;
        if !meta.is_dir() {
            return Err(CapsuleError::Untrusted(self.dir.clone()));
        }
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("read", &self.dir))?;
        for ent in entries.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            tracing::info!(capsule = %short(&name), "removing a capsule directory no event records");
            let is_dir = ent.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                if let Ok(Adopted::Running { record, .. }) = adopt(&ent.path()) {
                    kill_orphan(&name, &record);
                }
            }
            self.remove_dir(&name).await;
        }

        for c in mine {
            let dir = self.dir_of(&c.id);
            match c.status {
                CapsuleStatus::Running => {
                    let d = dir.clone();
                    match self.blocking(move || adopt(&d)).await? {
                        Ok(Adopted::Running {
                            record,
                            supervisor_alive: true,
                        }) => {
                            tracing::info!(capsule = %short(&c.id), pid = record.pid, "re-adopted a running capsule");
                            self.spawn_watch(c.id.clone(), Watch::Pid(record.supervisor_pid));
                        }
                        _ => self.on_supervisor_done(&c.id).await,
                    }
                }
                CapsuleStatus::Exited => {
                    let policy: RestartPolicy = c.spec.restart.parse().unwrap_or_default();
                    if restart_at_agent_start(policy, c.stop_requested) {
                        if let Err(e) = self.restart(&c.id, true).await {
                            tracing::warn!(capsule = %short(&c.id), "restart at agent start: {e}");
                        }
                    }
                }
                CapsuleStatus::Created | CapsuleStatus::Removed => {}
            }
        }
        Ok(())
    }
    // --- stop, kill, remove -------------------------------------------------------------------

    /// Sends `signal` to the capsule's first process, marking it as stopped by a person (so
    /// restart policies leave it alone). With SIGKILL, waits for the exit to be recorded.
    pub async fn kill(&self, key: &str, signal: Signal) -> Result<CapsuleView, CapsuleError> {
        let (id, restarts, running) = self.generation(key).await?;
        if !running {
            return Err(CapsuleError::Conflict(format!(
                "capsule {} is not running",
                short(&id)
            )));
        }
        self.mark_stopped(&id).await?;
        let record = self.live_record(&id)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.pid), signal)
            .map_err(|e| CapsuleError::Task(format!("signal capsule {}: {e}", short(&id))))?;
        if signal == Signal::SIGKILL {
            self.wait_recorded(&id, restarts, KILL_PATIENCE).await;
        }
        self.view(&id).await
    }

    /// docker's start: runs an exited capsule again in its directory (same writable layer,
    /// same spec), appending `capsule.started`. Clears a manual stop, so restart policies apply
    /// again. A running capsule is left as it is.
    pub async fn start(self: &Arc<Self>, key: &str) -> Result<CapsuleView, CapsuleError> {
        let (id, _, running) = self.generation(key).await?;
        if !running {
            self.restart(&id, true).await?;
        }
        self.view(&id).await
    }

    /// Records that a person stopped the capsule (`capsule.stop_requested`), before it is
    /// signalled: the exit that follows is then never restarted by its policy.
    async fn mark_stopped(&self, id: &str) -> Result<(), CapsuleError> {
        self.decide_one(Command::RequestStop { id: id.to_owned() })
            .await
    }

    /// docker's stop: SIGTERM, then SIGKILL after `timeout` seconds. Stopping a capsule that
    /// does not run is not an error.
    pub async fn stop(&self, key: &str, timeout: u64) -> Result<CapsuleView, CapsuleError> {
        if timeout > MAX_STOP_TIMEOUT {
            return Err(CapsuleError::BadRequest(format!(
                "stop timeout {timeout} is over the limit of {MAX_STOP_TIMEOUT} seconds"
            )));
        }
        let (id, restarts, running) = self.generation(key).await?;
        // Also for an exited capsule: a restart its policy has scheduled is called off.
        self.mark_stopped(&id).await?;
        if !running {
            return self.view(&id).await;
        }
        let record = match self.live_record(&id) {
            Ok(r) => r,
            Err(_) => return self.view(&id).await,
        };
        let pid = nix::unistd::Pid::from_raw(record.pid);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        if self
            .wait_recorded(&id, restarts, Duration::from_secs(timeout))
            .await
            .is_none()
            && self.is_running(&id).await
        {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            self.wait_recorded(&id, restarts, KILL_PATIENCE).await;
        }
        self.view(&id).await
    }

    /// Removes a capsule: its events say `capsule.removed`, its directory and cgroup go. A
    /// running one only with `force` (killed first).
    pub async fn remove(&self, key: &str, force: bool) -> Result<String, CapsuleError> {
        let (id, restarts, running) = self.generation(key).await?;
        if running {
            if !force {
                return Err(CapsuleError::Conflict(format!(
                    "capsule {} is running: stop it first or use rm -f",
                    short(&id)
                )));
            }
            self.mark_stopped(&id).await?;
            if let Ok(record) = self.live_record(&id) {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.pid), Signal::SIGKILL);
            }
            if self
                .wait_recorded(&id, restarts, KILL_PATIENCE)
                .await
                .is_none()
                && self.is_running(&id).await
            {
                return Err(CapsuleError::Conflict(format!(
                    "capsule {} did not stop",
                    short(&id)
                )));
            }
        }
        {
            let _ops = self.ops.lock().await;
            let idc = id.clone();
            let exists = self
                .state(move |s| {
                    s.capsules
                        .get(&idc)
                        .is_some_and(|c| c.status != CapsuleStatus::Removed)
                })
                .await?;
            if exists {
                self.decide_append(vec![Command::RemoveCapsule {
                    id: id.clone(),
                    force: false,
                }])
                .await?;
            }
        }
        self.remove_dir(&id).await;
        Ok(id)
    }
}

/// cgroup.
fn kill_orphan(id: &str, record: &PidRecord) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.pid), Signal::SIGKILL);
    if let Ok(h) = Hierarchy::detect() {
        let _ = h.open(id).remove();
    }
}

/// Waits until process `pid` is gone (pidfd when the kernel has it, else polling `/proc`).
async fn wait_pid_gone(pid: i32) {
    if let Some(fd) = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK).ok())
    {
        if let Ok(afd) = async_fd(fd) {
            let _ = afd.readable().await;
            return;
        }
    }
    while Path::new(&format!("/proc/{pid}")).exists()
        && bolt_capsule::runtime::supervisor::proc_stat(pid).is_some_and(|(s, _)| s != 'Z')
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use bolt_events::{Log, NodeKey};

    use crate::node::{Node, NodeOptions};
    use crate::service::capsules::CapsuleError;
    use crate::service::Services;

    #[tokio::test]
    async fn recover_does_not_clean_up_through_a_capsules_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let log = Log::open(&root.join("events.redb"), NodeKey::from_seed([7; 32])).unwrap();
        let node = Node::open(log, NodeOptions::for_this_host()).unwrap();
        node.start().unwrap();
        let services = Services::open(Arc::clone(&node), &root, &Default::default()).unwrap();

        // `capsules` swapped for a link to a directory of someone else's directories.
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(victim.join("0123456789ab")).unwrap();
        std::fs::write(victim.join("0123456789ab/data"), "keep").unwrap();
        std::fs::remove_dir(root.join("capsules")).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("capsules")).unwrap();

        let err = services.capsules.recover().await.unwrap_err();
        assert!(matches!(err, CapsuleError::Untrusted(_)), "{err}");
        assert!(victim.join("0123456789ab/data").exists());
    }
}
