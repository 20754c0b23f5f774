//! The capsule commands' output: `ps`, `top` and `inspect` tables, docker's status text and
//! durations. Pure: views and the time in, text out.

use crate::wire::capsules::{short, CapsuleView, TopView};
use crate::wire::time::format_time_ms;

/// docker's human duration: `Less than a second`, `5 seconds`, `About a minute`, `3 hours`...
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    let plural = |n: u64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    match s {
        0 => "Less than a second".into(),
        1..=59 => plural(s, "second"),
        60..=119 => "About a minute".into(),
        120..=3599 => plural(s / 60, "minute"),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => plural(s / 3600, "hour"),
        172_800..=1_209_599 => plural(s / 86_400, "day"),
        1_209_600..=5_183_999 => plural(s / 604_800, "week"),
        5_184_000..=63_071_999 => plural(s / 2_592_000, "month"),
        _ => plural(s / 31_536_000, "year"),
    }
}

/// The STATUS column: `Up 5 seconds`, `Exited (0) 2 minutes ago`, `Created`.
pub fn status_text(c: &CapsuleView, now_ms: u64) -> String {
    use bolt_state::CapsuleStatus as S;
    match c.status {
        S::Running => format!(
            "Up {}",
            human_duration(now_ms.saturating_sub(c.started.unwrap_or(c.created)))
        ),
        S::Exited => {
            let code = c.exit.map_or(-1, |e| e.exit_code);
            let oom = if c.exit.is_some_and(|e| e.oom) {
                ", OOM"
            } else {
                ""
            };
            format!(
                "Exited ({code}{oom}) {} ago",
                human_duration(now_ms.saturating_sub(c.finished.unwrap_or(c.created)))
            )
        }
        S::Created => "Created".into(),
        S::Removed => "Removed".into(),
    }
}

fn quoted_command(cmd: &[String]) -> String {
    let full = cmd.join(" ");
    let shown: String = if full.chars().count() > 20 {
        let mut s: String = full.chars().take(19).collect();
        s.push('…');
        s
    } else {
        full
    };
    format!("\"{shown}\"")
}

/// `bolt ps`: CAPSULE ID, IMAGE, COMMAND, CREATED, STATUS, NAMES.
pub fn render_ps(list: &[CapsuleView], now_ms: u64) -> String {
    render_ps_nodes(list, now_ms, false)
}

/// `bolt ps`, with a NODE column (the short id of the node it runs on) for `--all-nodes`.
pub fn render_ps_nodes(list: &[CapsuleView], now_ms: u64, nodes: bool) -> String {
    let mut titles = vec![
        "CAPSULE ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "NAMES",
    ];
    if nodes {
        titles.push("NODE");
    }
    let mut rows = vec![titles.into_iter().map(String::from).collect::<Vec<_>>()];
    for c in list {
        let mut row = vec![
            short(&c.id),
            c.image.clone(),
            quoted_command(&c.command),
            format!("{} ago", human_duration(now_ms.saturating_sub(c.created))),
            status_text(c, now_ms),
            c.name.clone(),
        ];
        if nodes {
            row.push(c.node.chars().take(12).collect());
        }
        rows.push(row);
    }
    crate::cli::table::align(&rows, 3)
}

/// `bolt top`.
pub fn render_top(top: &TopView) -> String {
    let mut rows = vec![top.titles.clone()];
    rows.extend(top.processes.iter().cloned());
    crate::cli::table::align(&rows, 3)
}

/// `bolt inspect` for people: one `key  value` line per field.
pub fn render_inspect(c: &CapsuleView) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let spec = &c.spec;
    let mut rows: Vec<Vec<String>> = vec![
        vec!["id".into(), c.id.clone()],
        vec!["name".into(), c.name.clone()],
        vec!["status".into(), format!("{:?}", c.status).to_lowercase()],
        vec!["image".into(), c.image.clone()],
        vec!["image digest".into(), c.image_digest.clone()],
        vec!["command".into(), c.command.join(" ")],
        vec!["pid".into(), opt(c.pid.map(|p| p.to_string()))],
        vec![
            "exit".into(),
            opt(c.exit.map(|e| {
                format!(
                    "{} (code {}, signal {}, oom {})",
                    e.exit_code,
                    e.code.map_or("-".into(), |v| v.to_string()),
                    e.signal.map_or("-".into(), |v| v.to_string()),
                    e.oom
                )
            })),
        ],
        vec!["restart policy".into(), c.restart.clone()],
        vec!["restarts".into(), c.restarts.to_string()],
        vec!["created".into(), format_time_ms(c.created)],
        vec!["started".into(), opt(c.started.map(format_time_ms))],
        vec!["finished".into(), opt(c.finished.map(format_time_ms))],
        vec!["node".into(), c.node.clone()],
        vec!["network".into(), spec.network.clone()],
        vec!["hostname".into(), opt(spec.hostname.clone())],
        vec!["user".into(), opt(spec.user.clone())],
        vec!["workdir".into(), opt(spec.workdir.clone())],
        vec![
            "memory".into(),
            opt(spec.memory_bytes.map(|m| m.to_string())),
        ],
        vec![
            "cpus".into(),
            opt(spec
                .cpu_millis
                .map(|m| format!("{}", f64::from(m) / 1000.0))),
        ],
        vec![
            "pids limit".into(),
            opt(spec.pids_limit.map(|m| m.to_string())),
        ],
    ];
    for e in &spec.env {
        rows.push(vec!["env".into(), e.clone()]);
    }
    for (k, v) in &spec.labels {
        rows.push(vec!["label".into(), format!("{k}={v}")]);
    }
    let mut s = crate::cli::table::align(&rows, 3);
    s.push('\n');
    s
}
