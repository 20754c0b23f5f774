//! What the resource commands (`bolt network`, `volume`, `snapshot`, the capsule commands)
//! share: the async runtime, the per-name loop of `rm`/`stop`/... and the `ls` output.

use std::future::Future;
use std::io::Write;

use serde::Serialize;

use crate::cli::{CliError, Format};
use crate::client::{encode_segment, Client};

/// Runs `fut` on a fresh current-thread runtime.
pub(crate) fn block_on<T>(fut: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    rt.block_on(fut)
}

/// A JSON encoding or decoding failure as the CLI reports it.
pub(crate) fn json_err(e: serde_json::Error) -> CliError {
    CliError::Client(crate::client::ClientError::Decode(e.to_string()))
}

/// docker's way with several names: `op` each in turn, printing the name on `out` when it
/// succeeds and `bolt: ERROR` on stderr (one line, as it happens) when it fails. `Ok(true)`
/// when all succeeded; the caller exits 1 otherwise. Only a failed write to `out` stops the
/// loop.
pub(crate) async fn each_name<T, E: std::fmt::Display>(
    out: &mut impl Write,
    names: Vec<String>,
    mut op: impl AsyncFnMut(&str) -> Result<T, E>,
) -> Result<bool, CliError> {
    let mut ok = true;
    for name in names {
        match op(&name).await {
            Ok(_) => writeln!(out, "{name}")?,
            Err(e) => {
                eprintln!("bolt: {e}");
                ok = false;
            }
        }
    }
    out.flush()?;
    Ok(ok)
}

/// `inspect NAME...` of a named resource under `base` (`/v1/networks`, `/v1/volumes`): every
/// `GET base/NAME`, then one pretty JSON array. The first failure ends it (docker's way).
pub(crate) async fn inspect_named<T: serde::de::DeserializeOwned + Serialize>(
    out: &mut impl Write,
    client: &Client,
    base: &str,
    names: Vec<String>,
) -> Result<(), CliError> {
    let mut all: Vec<T> = Vec::with_capacity(names.len());
    for name in names {
        let path = format!("{base}/{}", encode_segment(&name));
        all.push(client.call(hyper::Method::GET, &path, None).await?);
    }
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&all).map_err(json_err)?
    )?;
    Ok(())
}

/// The `ls` output of a list: `quiet_line` of each item with `-q`, one JSON object a line
/// with `--format json`, else the `table`.
pub(crate) fn write_list<T: Serialize>(
    out: &mut impl Write,
    list: &[T],
    quiet: bool,
    format: Format,
    quiet_line: impl Fn(&T) -> String,
    table: impl FnOnce(&[T]) -> String,
) -> Result<(), CliError> {
    if quiet {
        for item in list {
            writeln!(out, "{}", quiet_line(item))?;
        }
        return Ok(());
    }
    match format {
        Format::Json => {
            for item in list {
                writeln!(out, "{}", serde_json::to_string(item).map_err(json_err)?)?;
            }
        }
        Format::Table => out.write_all(table(list).as_bytes())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Serialize)]
    struct Item {
        name: String,
    }

    fn items() -> Vec<Item> {
        ["a", "b"]
            .map(|n| Item { name: n.to_owned() })
            .into_iter()
            .collect()
    }

    fn render(quiet: bool, format: Format) -> String {
        let mut out = Vec::new();
        write_list(
            &mut out,
            &items(),
            quiet,
            format,
            |i| format!("q-{}", i.name),
            |l| format!("table of {}\n", l.len()),
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ls_prints_quiet_lines_json_lines_or_the_table() {
        assert_eq!(render(true, Format::Json), "q-a\nq-b\n");
        assert_eq!(render(true, Format::Table), "q-a\nq-b\n");
        assert_eq!(
            render(false, Format::Json),
            "{\"name\":\"a\"}\n{\"name\":\"b\"}\n"
        );
        assert_eq!(render(false, Format::Table), "table of 2\n");
    }

    #[test]
    fn each_name_prints_the_names_that_succeeded_and_goes_on_after_a_failure() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let ok = rt
            .block_on(each_name(
                &mut out,
                vec!["x".into(), "bad".into(), "y".into()],
                async |n: &str| {
                    seen.push(n.to_owned());
                    if n == "bad" {
                        Err(CliError::Usage("no".into()))
                    } else {
                        Ok(())
                    }
                },
            ))
            .unwrap();
        assert!(!ok);
        assert_eq!(seen, ["x", "bad", "y"]);
        assert_eq!(String::from_utf8(out).unwrap(), "x\ny\n");

        let mut out = Vec::new();
        let ok = rt
            .block_on(each_name(&mut out, vec!["z".into()], async |_: &str| {
                Ok::<_, CliError>(())
            }))
            .unwrap();
        assert!(ok);
        assert_eq!(String::from_utf8(out).unwrap(), "z\n");
    }
}
