//! The agent's import rule, kept by reading the source tree (docs/ARCHITECTURE.md draws it).
//!
//! `agent/src` is split into layers, one folder each; a file belongs to the layer of the folder
//! it is in (`daemon.rs`, `lib.rs` and `main.rs` are their own). A layer may name only the
//! layers listed for it in [`RULES`]:
//!
//! ```text
//!   wire <- node <- service <- api        cli -> client -> wire
//!            shim <-'                     daemon.rs composes them all
//! ```
//!
//! The checker strips comments, strings and character literals, then finds every path that
//! starts at the crate root: `crate::LAYER`, `crate::{LAYER, ...}` (nested groups too), and
//! `super::super::...` chains that climb out of the file's layer. It is tested on fixture trees
//! with deliberate wrong imports before it is run on the real tree.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Each layer and the other layers it may import. A layer not listed here (a new top-level
/// folder or file) is refused until it is given a rule.
const RULES: &[(&str, &[&str])] = &[
    ("wire", &[]),
    ("node", &["wire"]),
    ("shim", &["wire"]),
    ("service", &["wire", "node", "shim"]),
    ("api", &["wire", "node", "service"]),
    ("client", &["wire"]),
    ("cli", &["client", "wire"]),
    (
        "lib",
        &[
            "api", "cli", "client", "daemon", "node", "service", "shim", "wire",
        ],
    ),
    ("main", &["cli", "daemon", "shim"]),
    (
        "daemon",
        &["api", "cli", "client", "node", "service", "shim", "wire"],
    ),
];

/// One import that breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: PathBuf,
    line: usize,
    from: String,
    to: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: layer `{}` imports `{}`",
            self.file.display(),
            self.line,
            self.from,
            self.to
        )
    }
}

/// The layer a file under `src` belongs to, and its module path below the crate root
/// (`service/capsules/create.rs` -> ("service", ["service", "capsules", "create"])).
fn layer_of(src: &Path, file: &Path) -> (String, Vec<String>) {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut module: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if module.last().map(String::as_str) == Some("mod") {
        module.pop();
    }
    if matches!(module.as_slice(), [only] if only == "lib" || only == "main") {
        return (module[0].clone(), Vec::new());
    }
    (module[0].clone(), module)
}

/// `text` with comments, strings and char literals replaced by spaces (newlines kept, so line
/// numbers hold). Lifetimes (`'a`) are left alone.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(rest) {
            // r#"..."#: ends at a quote followed by the same number of hashes.
            let open = 2 + hashes;
            out.extend(std::iter::repeat_n(b' ', open));
            i += open;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while i < b.len() && !b[i..].starts_with(&close) {
                blank(&mut out, b[i]);
                i += 1;
            }
            let n = close.len().min(b.len() - i);
            out.extend(std::iter::repeat_n(b' ', n));
            i += n;
        } else if b[i] == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
            out.push(b' ');
            i += 1;
        } else if b[i] == b'\'' && char_literal_len(rest).is_some() {
            let n = char_literal_len(rest).unwrap_or(1);
            out.extend(std::iter::repeat_n(b' ', n));
            i += n;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `r"`, `r#"`, `br##"`...: the number of hashes, when `s` starts a raw string.
fn raw_string_start(s: &[u8]) -> Option<usize> {
    let s = s.strip_prefix(b"b").unwrap_or(s);
    let s = s.strip_prefix(b"r")?;
    let hashes = s.iter().take_while(|c| **c == b'#').count();
    (s.get(hashes) == Some(&b'"')).then_some(hashes)
}

/// The length of a char literal at the start of `s` (`'a'`, `'\n'`, `'\''`, `'\u{1F600}'`,
/// `'é'`), or None for a lifetime.
fn char_literal_len(s: &[u8]) -> Option<usize> {
    if s.get(1) == Some(&b'\\') {
        let end = s.iter().skip(3).position(|c| *c == b'\'')?;
        return Some(end + 4);
    }
    let width = match *s.get(1)? {
        c if c < 0x80 => 1,
        c if c >= 0xf0 => 4,
        c if c >= 0xe0 => 3,
        _ => 2,
    };
    (s.get(1 + width) == Some(&b'\'')).then_some(width + 2)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The identifier starting at `i` (after whitespace), and the index after it.
fn ident_at(b: &[u8], mut i: usize) -> Option<(String, usize)> {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    (i > start).then(|| (String::from_utf8_lossy(&b[start..i]).into_owned(), i))
}

/// Skips whitespace and `::` at `i`; the index after, if `::` was there.
fn colons_at(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    b[i..].starts_with(b"::").then_some(i + 2)
}

/// The first segments named by a `{...}` group at `i` (just after its `{`), at the group's own
/// depth: `{wire, node::X, service::{a, b}}` -> wire, node, service.
fn group_heads(b: &[u8], mut i: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut expect_head = true;
    while i < b.len() {
        match b[i] {
            b'{' => depth += 1,
            b'}' if depth == 0 => break,
            b'}' => depth -= 1,
            b',' if depth == 0 => expect_head = true,
            c if is_ident(c) && depth == 0 && expect_head => {
                if let Some((name, next)) = ident_at(b, i) {
                    heads.push(name);
                    expect_head = false;
                    i = next;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    heads
}

/// Every crate-root module a file names, with its line: `crate::X`, `crate::{X, ...}`, and
/// `super` chains that reach the crate root from `module`.
fn root_imports(code: &str, module: &[String]) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let line_of = |i: usize| 1 + b[..i].iter().filter(|c| **c == b'\n').count();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b':');
        if !boundary || !is_ident(b[i]) {
            i += 1;
            continue;
        }
        let Some((word, mut next)) = ident_at(b, i) else {
            i += 1;
            continue;
        };
        // How deep below the crate root the path's next segment is looked up.
        let depth = match word.as_str() {
            "crate" => Some(0),
            "super" => {
                // `super` from a `mod.rs`/`NAME.rs` module names its parent.
                let mut ups = 1;
                let mut j = next;
                while let Some(after) = colons_at(b, j) {
                    match ident_at(b, after) {
                        Some((w, n)) if w == "super" => {
                            ups += 1;
                            j = n;
                        }
                        _ => break,
                    }
                }
                next = j;
                module.len().checked_sub(ups)
            }
            _ => None,
        };
        if let Some(0) = depth {
            if let Some(after) = colons_at(b, next) {
                let mut k = after;
                while k < b.len() && b[k].is_ascii_whitespace() {
                    k += 1;
                }
                if b.get(k) == Some(&b'{') {
                    for head in group_heads(b, k + 1) {
                        found.push((line_of(i), head));
                    }
                } else if let Some((head, _)) = ident_at(b, k) {
                    found.push((line_of(i), head));
                }
            }
        }
        i = next.max(i + 1);
    }
    found
}

/// All `.rs` files under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Checks every file under `src` against `rules`.
fn check(src: &Path, rules: &[(&str, &[&str])]) -> Vec<Violation> {
    let mut out = BTreeSet::new();
    for file in rust_files(src) {
        let (layer, module) = layer_of(src, &file);
        let allowed = rules.iter().find(|(l, _)| *l == layer).map(|(_, a)| *a);
        let text = fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
        let Some(allowed) = allowed else {
            out.insert(Violation {
                file: rel,
                line: 1,
                from: layer.clone(),
                to: "(no rule for this layer)".into(),
            });
            continue;
        };
        for (line, to) in root_imports(&code_only(&text), &module) {
            let is_layer = rules.iter().any(|(l, _)| *l == to);
            if to != layer && is_layer && !allowed.contains(&to.as_str()) {
                out.insert(Violation {
                    file: rel.clone(),
                    line,
                    from: layer.clone(),
                    to,
                });
            }
        }
    }
    out.into_iter().collect()
}

/// A fixture tree under a temporary directory: (relative path, content).
fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let path = dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    dir
}

fn pairs(v: &[Violation]) -> Vec<(String, String)> {
    v.iter().map(|v| (v.from.clone(), v.to.clone())).collect()
}

#[test]
fn the_checker_catches_every_form_of_a_wrong_import() {
    let tree = fixture(&[
        (
            "lib.rs",
            "pub mod wire; pub mod service; pub mod cli; pub mod api;",
        ),
        ("wire/mod.rs", "use crate::service::Capsules;\n"),
        (
            "cli/mod.rs",
            "use crate::{client::Client, wire,\n  api::{router, ApiError}};\n",
        ),
        // Three levels down: `super::super::super` is the crate root.
        (
            "service/capsules/create.rs",
            "fn f() { let _ = super::super::super::api::router(); }\n",
        ),
        ("api/mod.rs", "pub fn router() { crate :: cli :: run(); }\n"),
        ("newlayer/mod.rs", "pub fn f() {}\n"),
    ]);
    let found = check(tree.path(), RULES);
    assert_eq!(
        pairs(&found),
        [
            ("api".to_owned(), "cli".to_owned()),
            ("cli".to_owned(), "api".to_owned()),
            ("newlayer".to_owned(), "(no rule for this layer)".to_owned()),
            ("service".to_owned(), "api".to_owned()),
            ("wire".to_owned(), "service".to_owned()),
        ],
        "{found:#?}"
    );
    let cli = found.iter().find(|v| v.from == "cli").unwrap();
    assert_eq!((cli.file.as_path(), cli.line), (Path::new("cli/mod.rs"), 1));
    assert!(found
        .iter()
        .any(|v| v.to_string() == "service/capsules/create.rs:1: layer `service` imports `api`"));
}

#[test]
fn the_checker_ignores_comments_strings_and_allowed_climbs() {
    let tree = fixture(&[
        (
            "wire/mod.rs",
            "//! Spoken by `crate::shim` and [`crate::service`].\n\
             /* crate::api /* nested crate::cli */ still a comment crate::node */\n\
             const A: &str = \"crate::service::x\";\n\
             const B: &str = r#\"a \" crate::api\"#;\n\
             const C: char = '\"'; const D: char = 'x';\n\
             fn f<'a>(s: &'a str) -> &'a str { s }\n\
             use self::frame::Frame; use super::wire::x;\n",
        ),
        // `super` inside the layer stays inside it.
        (
            "service/capsules/create.rs",
            "use super::Capsules; use super::super::node::Node;\n",
        ),
        (
            "service/mod.rs",
            "use crate::{node::{Node, NodeError}, wire, shim};\n",
        ),
        (
            "daemon.rs",
            "use crate::{api, cli, client, node, service, shim, wire};\n",
        ),
    ]);
    let found = check(tree.path(), RULES);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_agent_tree_keeps_the_layer_rule() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // Every layer folder and top-level file has a rule, and every rule names a real layer.
    let mut layers: Vec<String> = fs::read_dir(&src)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            p.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    layers.sort();
    let mut ruled: Vec<String> = RULES.iter().map(|(l, _)| (*l).to_owned()).collect();
    ruled.sort();
    assert_eq!(
        layers, ruled,
        "agent/src's folders and the RULES table differ"
    );
    let found = check(&src, RULES);
    assert!(
        found.is_empty(),
        "imports that break the layer rule (docs/ARCHITECTURE.md):\n{}",
        found
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The checker saw the real imports: the service layer names the node layer somewhere.
    let node_used = rust_files(&src.join("service")).iter().any(|f| {
        let (_, module) = layer_of(&src, f);
        root_imports(&code_only(&fs::read_to_string(f).unwrap()), &module)
            .iter()
            .any(|(_, to)| to == "node")
    });
    assert!(
        node_used,
        "the checker found no service -> node import at all"
    );
}
