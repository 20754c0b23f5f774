//! `bolt top`: the processes of a running capsule, `ps -ef` style.

use bolt_capsule::runtime::Hierarchy;

use crate::service::capsules::{CapsuleError, Capsules};
use crate::wire::capsules::{short, TopView};

impl Capsules {
    /// The processes of a running capsule, `ps -ef` style.
    pub async fn top(&self, key: &str) -> Result<TopView, CapsuleError> {
        let (id, _, running) = self.generation(key).await?;
        if !running {
            return Err(CapsuleError::Conflict(format!(
                "capsule {} is not running",
                short(&id)
            )));
        }
        let record = self.live_record(&id)?;
        self.blocking(move || {
            let pids = Hierarchy::detect()
                .ok()
                .and_then(|h| h.open(&id).pids().ok())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| vec![record.pid]);
            top_view(&pids)
        })
        .await
    }
}

/// `top`'s table for host pids: UID PID PPID STIME TIME CMD (pids as the host sees them).
pub fn top_view(pids: &[i32]) -> TopView {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    let boot_s = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    let mut rows = Vec::new();
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Fields after the command: 0 state, 1 ppid, 11 utime, 12 stime, 19 starttime.
        let ppid = num(1);
        let cpu_s = (num(11) + num(12)) / tick;
        let start = boot_s + num(19) / tick;
        let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("Uid:")
                        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
                })
            })
            .unwrap_or_else(|| "?".into());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| {
                let name = stat
                    .split_once('(')
                    .map(|(_, r)| r)
                    .and_then(|r| r.rsplit_once(')'))
                    .map_or("", |(n, _)| n);
                format!("[{name}]")
            });
        rows.push(vec![
            uid,
            pid.to_string(),
            ppid.to_string(),
            crate::wire::time::clock(start),
            format!(
                "{:02}:{:02}:{:02}",
                cpu_s / 3600,
                (cpu_s / 60) % 60,
                cpu_s % 60
            ),
            cmd,
        ]);
    }
    TopView {
        titles: ["UID", "PID", "PPID", "STIME", "TIME", "CMD"]
            .map(String::from)
            .to_vec(),
        processes: rows,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn top_lists_this_process() {
        let me = std::process::id() as i32;
        let view = top_view(&[me]);
        assert_eq!(view.titles.len(), 6);
        assert_eq!(view.processes.len(), 1);
        assert_eq!(view.processes[0][1], me.to_string());
    }
}
