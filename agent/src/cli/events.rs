//! `bolt events`, `bolt info`, `bolt state` and `bolt events verify`: listing and following
//! the log (resuming after an agent restart) and rendering the node's own views for people.

use std::io::Write;
use std::time::Duration;

use bolt_events::Cursor;
use serde_json::Value;

use crate::cli::table::align;
use crate::cli::{CliError, Format};
use crate::client::{Client, ClientError, EventSelect, EventStream};
use crate::wire::time::format_time_ms;
use crate::wire::{EventView, InfoView, StateView, VerifyView, MAX_EVENTS_PAGE};

/// How long `events --follow` keeps trying to reconnect after the agent went away.
const RECONNECT_FOR: Duration = Duration::from_secs(30);
const RECONNECT_EVERY: Duration = Duration::from_millis(200);

pub(crate) async fn list(
    client: &Client,
    mut since: Cursor,
    select: &EventSelect,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut all = Vec::new();
    loop {
        let page = client.events_page(since, MAX_EVENTS_PAGE, select).await?;
        // The agent scans a bounded number of events per request: continue from the cursor
        // it reached until that is its head.
        let done = !page.more() || page.cursor <= since;
        since = page.cursor;
        let page = page.events;
        match format {
            // JSON lines go out page by page; a table needs every row to align its columns.
            Format::Json => {
                for ev in &page {
                    writeln!(out, "{}", serde_json::to_string(ev)?)?;
                }
            }
            Format::Table => all.extend(page),
        }
        if done {
            break;
        }
    }
    if format == Format::Table {
        out.write_all(render_events(&all).as_bytes())?;
    }
    Ok(())
}

/// Print the selected events after `since`, then live ones; when the agent goes away,
/// reconnect with the same selection and resume after the last cursor printed (no duplicates,
/// no gaps).
pub(crate) async fn follow(
    client: &Client,
    since: Cursor,
    select: &EventSelect,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut last = since;
    let mut stream = client.stream_select(last, select).await?;
    if format == Format::Table {
        writeln!(out, "{}", follow_row(&EVENT_HEADER.map(String::from)))?;
        out.flush()?;
    }
    loop {
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                // A broken connection: resume below, as after a close.
                Err(ClientError::Stream(_)) => break,
                Err(e) => return Err(e.into()),
            };
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&ev)?)?,
                Format::Table => writeln!(out, "{}", follow_row(&event_row(&ev)))?,
            }
            out.flush()?;
            last = Cursor(ev.cursor);
        }
        stream = reconnect(client, last, select).await?;
    }
}

async fn reconnect(
    client: &Client,
    last: Cursor,
    select: &EventSelect,
) -> Result<EventStream, CliError> {
    let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    loop {
        tokio::time::sleep(RECONNECT_EVERY).await;
        match client.stream_select(last, select).await {
            Ok(s) => return Ok(s),
            // The agent refuses the selection itself: retrying will not help.
            Err(e @ ClientError::Api { status: 400, .. }) => return Err(e.into()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => {}
        }
    }
}

const EVENT_HEADER: [&str; 6] = ["CURSOR", "TIME", "ORIGIN", "SEQ", "KIND", "SUMMARY"];
/// Column widths of a followed table, where later rows are not known yet.
const FOLLOW_WIDTHS: [usize; 5] = [8, 24, 12, 6, 24];

fn follow_row(cells: &[String; 6]) -> String {
    let mut line = String::new();
    for (cell, w) in cells.iter().zip(FOLLOW_WIDTHS) {
        line.push_str(&format!("{cell:<w$}  "));
    }
    line.push_str(&cells[5]);
    line.trim_end().to_string()
}

fn event_row(ev: &EventView) -> [String; 6] {
    [
        ev.cursor.to_string(),
        format_time_ms(ev.time_ms()),
        ev.origin.short(),
        ev.seq.to_string(),
        ev.kind.clone(),
        summary(&ev.payload),
    ]
}

/// The events table: cursor, time, origin (short), seq, kind and a summary of the payload.
pub fn render_events(events: &[EventView]) -> String {
    let mut rows = vec![EVENT_HEADER.map(String::from).to_vec()];
    rows.extend(events.iter().map(|e| event_row(e).to_vec()));
    align(&rows, 2)
}

/// `bolt info` for people.
pub fn render_info(info: &InfoView) -> String {
    let rows = [
        ["node", &info.node_id.to_string()],
        ["name", &info.name],
        ["version", &info.version],
        ["head", &info.head.to_string()],
        ["events", &info.events.to_string()],
        ["state cursor", &info.state_cursor.to_string()],
        ["state hash", &info.state_hash.to_string()],
        ["uptime", &format_duration(info.uptime_s)],
    ];
    align(&rows.map(|r| r.map(String::from).to_vec()), 2)
}

/// `bolt events verify` for people.
pub fn render_verify(v: &VerifyView) -> String {
    if v.ok {
        return format!(
            "ok: {} events from {} origin(s), every link and signature holds\n",
            v.events, v.origins
        );
    }
    let mut s = format!(
        "FAULTY: {} fault(s) in {} events from {} origin(s)\n",
        v.faults.len(),
        v.events,
        v.origins
    );
    for f in &v.faults {
        s.push_str(&format!("  - {f}\n"));
    }
    s
}

/// `bolt state` for people: the cursor and hash, every scalar field, then one table per map
/// (or list) of records. Generic over the state's shape, so new state fields show up as-is.
pub fn render_state(view: &StateView) -> String {
    let mut fields = vec![
        vec!["cursor".to_string(), view.cursor.to_string()],
        vec!["hash".to_string(), view.hash.to_string()],
    ];
    let mut tables = String::new();
    match &view.state {
        Value::Object(map) => {
            for (name, value) in map {
                match records(value) {
                    Some(rows) => {
                        tables.push_str(&format!("\n{name} ({})\n", rows.len()));
                        tables.push_str(&record_table(&rows));
                    }
                    None => fields.push(vec![name.clone(), cell(value)]),
                }
            }
        }
        other => fields.push(vec!["state".to_string(), cell(other)]),
    }
    let mut s = align(&fields, 2);
    s.push_str(&tables);
    s
}

/// A map or list whose values are all objects, as (key, record) pairs.
fn records(value: &Value) -> Option<Vec<(String, &serde_json::Map<String, Value>)>> {
    match value {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| v.as_object().map(|o| (k.clone(), o)))
            .collect(),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_object().map(|o| (i.to_string(), o)))
            .collect(),
        _ => None,
    }
}

fn record_table(rows: &[(String, &serde_json::Map<String, Value>)]) -> String {
    let mut columns: Vec<&String> = Vec::new();
    for (_, r) in rows {
        for k in r.keys() {
            if !columns.contains(&k) {
                columns.push(k);
            }
        }
    }
    let mut table = vec![std::iter::once("KEY".to_string())
        .chain(columns.iter().map(|c| c.to_uppercase()))
        .collect::<Vec<_>>()];
    for (key, r) in rows {
        table.push(
            std::iter::once(shorten_id(key))
                .chain(
                    columns
                        .iter()
                        .map(|c| r.get(*c).map(cell).unwrap_or_default()),
                )
                .collect(),
        );
    }
    align(&table, 2)
}

/// One value in a cell: scalars as they are, 64-hex ids shortened, the rest as compact JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => shorten_id(s),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        other => truncate(&other.to_string(), 40),
    }
}

fn shorten_id(s: &str) -> String {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        s[..12].to_string()
    } else {
        s.to_string()
    }
}

/// A one-line summary of a payload (`{"category": {"variant": {fields}}}`): its non-empty
/// fields as `key=value`, cut to 72 characters.
pub fn summary(payload: &Value) -> String {
    let fields = payload
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(Value::as_object)
        .and_then(|m| m.values().next());
    let parts: Vec<String> = match fields {
        Some(Value::Object(fields)) => fields
            .iter()
            .filter(|(_, v)| !is_empty(v))
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect(),
        Some(other) if !is_empty(other) => vec![cell(other)],
        _ => Vec::new(),
    };
    truncate(&parts.join(" "), 72)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

pub(crate) fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}
