//! End to end: images through the real `bolt` binary against the loopback test registry
//! (`scripts/registry.sh`, images from `tests/fixtures/build-images.sh`, see docs/fixtures.md).
//!
//! Skipped with a message when `BOLT_TEST_REGISTRY` is unset; failed instead when
//! `BOLT_REQUIRE_ROOT_TESTS=1` (CI).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use bolt_tests::{one_error_line, Node, Output};
use serde_json::Value;

/// The registry (`127.0.0.1:PORT`), or None (and a message) when the test must skip.
fn registry(test: &str) -> Option<String> {
    bolt_skip::registry(test)
}

/// Manifest digests of the pushed fixtures: `REGISTRY/name:tag` → `sha256:...`.
fn fixture_digests() -> HashMap<String, String> {
    let dir =
        std::env::var("BOLT_TEST_REGISTRY_DIR").unwrap_or_else(|_| "/tmp/bolt-registry".into());
    let path = Path::new(&dir).join("images.tsv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tests/fixtures/build-images.sh all)",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(r, d)| (r.to_string(), d.trim().to_string()))
        .collect()
}

/// A started agent with no registry credentials and `extra` agent flags.
fn node(dir: &Path, name: &str, extra: &[&str]) -> Node {
    let auth = dir.join(format!("{name}-no-auth.json"));
    let mut args = vec!["--registry-auth", auth.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut n = Node::new(dir, name).unwrap().with_agent_args(&args);
    n.start().unwrap();
    n
}

fn ok(out: Output) -> Output {
    assert!(out.ok(), "bolt failed: {out:?}");
    out
}

fn bolt(node: &Node, args: &[&str]) -> Output {
    ok(node.bolt(args).unwrap())
}

/// `bolt pull --format json REF`: the pull result.
fn pull(node: &Node, reference: &str) -> Value {
    let out = bolt(node, &["pull", "--format", "json", reference]);
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// `bolt images --format json`: reference → digest.
fn images(node: &Node) -> BTreeMap<String, String> {
    bolt(node, &["images", "--format", "json"])
        .lines()
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["reference"].as_str().unwrap().to_string(),
                v["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn events(node: &Node) -> Vec<Value> {
    bolt(node, &["events", "--format", "json"])
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn image_events<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    let variant = kind.strip_prefix("image.").unwrap();
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| &e["payload"]["image"][variant])
        .collect()
}

fn state(node: &Node) -> Value {
    let out = bolt(node, &["state", "--format", "json"]);
    serde_json::from_str(&out.stdout).unwrap()
}

fn node_id(node: &Node) -> String {
    let out = bolt(node, &["info", "--format", "json"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v["node_id"].as_str().unwrap().to_string()
}

/// Every path under `dir` with its size (files) or kind, to compare a store before and after.
fn listing(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for ent in std::fs::read_dir(&d).unwrap() {
            let ent = ent.unwrap();
            let p = ent.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else if meta.is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                format!("{} bytes", meta.len())
            };
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), what);
        }
    }
    out
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pulls_are_listed_recorded_as_events_known_to_the_state_and_share_layers() {
    let Some(reg) =
        registry("pulls_are_listed_recorded_as_events_known_to_the_state_and_share_layers")
    else {
        return;
    };
    let digests = fixture_digests();
    let busybox = format!("{reg}/bolt-test/busybox:latest");
    let debian = format!("{reg}/bolt-test/debian:bookworm");
    let extra = format!("{reg}/bolt-test/debian-extra:bookworm");
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path(), "a", &[]);
    let id = node_id(&n);

    // Plain progress lines (stdout is not a terminal), then the result line.
    let out = bolt(&n, &["pull", &format!("{reg}/bolt-test/busybox")]);
    let lines = out.lines();
    assert!(
        lines.iter().any(|l| l.contains(": fetched ")),
        "{}",
        out.stdout
    );
    assert!(
        lines.iter().any(|l| l.contains(": unpacked")),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with(&format!("{busybox}: pulled {}", digests[&busybox])),
        "{}",
        out.stdout
    );

    let deb = pull(&n, &debian);
    assert_eq!(deb["image"]["digest"], digests[&debian].as_str());
    assert_eq!(deb["image"]["layers"].as_array().unwrap().len(), 3);

    let listed = images(&n);
    assert_eq!(listed.get(&busybox), Some(&digests[&busybox]));
    assert_eq!(listed.get(&debian), Some(&digests[&debian]));
    let table = bolt(&n, &["images"]).stdout;
    let header = table.lines().next().unwrap();
    for col in ["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{reg}/bolt-test/busybox "))
                && l.contains(" latest ")
                && l.contains(&digests[&busybox][..19])),
        "{table}"
    );

    // The events carry the digests; the state knows which node holds what.
    let evs = events(&n);
    let pulled = image_events(&evs, "image.pulled");
    assert_eq!(pulled.len(), 2, "{evs:?}");
    assert_eq!(pulled[0]["reference"], busybox.as_str());
    assert_eq!(pulled[0]["digest"], digests[&busybox].as_str());
    assert_eq!(pulled[1]["reference"], debian.as_str());
    assert_eq!(pulled[1]["digest"], digests[&debian].as_str());
    assert_eq!(
        pulled[1]["layers"],
        deb["image"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].clone())
            .collect::<Value>()
    );
    assert_eq!(pulled[1]["config_digest"], deb["image"]["config_digest"]);
    let st = state(&n);
    for r in [&busybox, &debian] {
        let d = &digests[r];
        assert_eq!(st["state"]["image_refs"][r], d.as_str(), "{st}");
        let img = &st["state"]["images"][d];
        assert!(strings(&img["nodes"]).contains(&id), "{img}");
        assert!(strings(&img["references"]).contains(r), "{img}");
    }

    // debian-extra shares debian's 3 layers: only its new layer is fetched and unpacked.
    let ext = pull(&n, &extra);
    let layers: Vec<String> = ext["image"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers.len(), 4);
    assert_eq!(
        &layers[..3],
        &strings(
            &deb["image"]["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].clone())
                .collect::<Value>()
        )[..]
    );
    let fetched = strings(&ext["fetched"]);
    let fetched_layers: Vec<&String> = fetched.iter().filter(|d| layers.contains(d)).collect();
    assert_eq!(
        fetched_layers,
        [&layers[3]],
        "only the new layer is fetched: {ext}"
    );
    let reused = strings(&ext["reused"]);
    for l in &layers[..3] {
        assert!(reused.contains(l), "{l} reused: {ext}");
    }
    assert_eq!(ext["unpacked"].as_array().unwrap().len(), 1, "{ext}");
    assert!(ext["cursor"].as_u64().is_some());

    // The unpacked layers are in place, whiteouts applied in the top one.
    let layer_dir = |i: usize| {
        let diff = ext["image"]["layers"][i]["diff_id"].as_str().unwrap();
        n.root()
            .join("images/layers")
            .join(diff.strip_prefix("sha256:").unwrap())
    };
    for i in 0..4 {
        assert!(layer_dir(i).is_dir(), "layer {i}");
    }
    assert!(layer_dir(3)
        .join("etc/bolt-opaque-dir/extra-marker")
        .is_file());

    // A restart keeps the images and records nothing new about them.
    let before = image_events(&events(&n), "image.pulled").len();
    n.stop().unwrap();
    n.start().unwrap();
    assert_eq!(images(&n).len(), 3);
    let evs = events(&n);
    assert_eq!(image_events(&evs, "image.pulled").len(), before);
    assert!(image_events(&evs, "image.removed").is_empty());
}

#[test]
fn a_platform_is_picked_from_an_index() {
    let Some(reg) = registry("a_platform_is_picked_from_an_index") else {
        return;
    };
    let digests = fixture_digests();
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "a", &[]);
    let multi = format!("{reg}/bolt-test/busybox-multiarch:latest");
    let amd = pull(&n, &multi);
    assert_eq!(amd["image"]["architecture"], "amd64");
    assert_eq!(
        amd["image"]["digest"],
        digests[&format!("{reg}/bolt-test/busybox:latest")].as_str()
    );
    assert_eq!(amd["image"]["index_digest"], digests[&multi].as_str());
    let out = bolt(
        &n,
        &[
            "pull",
            "--format",
            "json",
            "--platform",
            "linux/arm64",
            &multi,
        ],
    );
    let arm: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(arm["image"]["architecture"], "arm64");
    assert_ne!(arm["image"]["digest"], amd["image"]["digest"]);
    assert_eq!(arm["image"]["layers"].as_array().unwrap().len(), 2);
    let err = one_error_line(&n.bolt(&["pull", "--platform", "linux", &multi]).unwrap());
    assert!(err.contains("invalid platform"), "{err}");
}

#[test]
fn hostile_images_are_refused_with_one_line_and_the_store_is_unchanged() {
    let Some(reg) = registry("hostile_images_are_refused_with_one_line_and_the_store_is_unchanged")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A 64 MiB cap refuses the 1 GiB bomb early.
    let n = node(dir.path(), "a", &["--max-layer-bytes", "67108864"]);
    pull(&n, &format!("{reg}/bolt-test/busybox"));
    let store = n.root().join("images");
    let before = listing(&store);
    let root_before = names_in(n.root());
    let images_before = images(&n);
    let events_before = events(&n).len();

    for (name, says) in [
        ("dotdot", "climbs out of the layer root"),
        ("symlink-escape", "symlink"),
        ("symlink-parent", "symlink"),
        ("hardlink-escape", "outside the layer root"),
        ("bad-diffid", "diff_id"),
        ("corrupt-blob", "refusing it"),
        ("bomb", "decompression bomb"),
    ] {
        let reference = format!("{reg}/hostile/{name}:latest");
        let out = n.bolt(&["pull", &reference]).unwrap();
        let line = one_error_line(&out);
        assert!(
            line.starts_with(&format!("bolt: pull {reference}: ")),
            "{line}"
        );
        assert!(line.contains(says), "{name}: {line}");
        assert_eq!(
            listing(&store),
            before,
            "{name} left something in the store"
        );
    }
    assert_eq!(names_in(n.root()), root_before);
    assert!(!dir.path().join("escape").exists());
    assert_eq!(images(&n), images_before);
    assert_eq!(
        events(&n).len(),
        events_before,
        "a refused pull records nothing"
    );
}

#[test]
fn rmi_and_prune_remove_references_blobs_and_layers() {
    let Some(reg) = registry("rmi_and_prune_remove_references_blobs_and_layers") else {
        return;
    };
    let digests = fixture_digests();
    let busybox = format!("{reg}/bolt-test/busybox:latest");
    let alias = format!("{reg}/bolt-e2e/alias:one");
    let digest = digests[&busybox].clone();
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "a", &[]);
    let id = node_id(&n);
    pull(&n, &busybox);
    let blobs = n.root().join("images/blobs/sha256");
    let layers = n.root().join("images/layers");
    let stored = names_in(&blobs);
    assert_eq!(stored.len(), 3, "manifest, config, layer: {stored:?}");

    bolt(&n, &["tag", &busybox, &alias]);
    assert_eq!(images(&n).get(&alias), Some(&digest));
    let evs = events(&n);
    assert_eq!(
        image_events(&evs, "image.tagged")[0]["reference"],
        alias.as_str()
    );

    // Removing one name keeps the image (and the node's hold on it) under the other.
    let out = bolt(&n, &["rmi", &busybox]);
    assert!(
        out.stdout.contains(&format!("untagged {busybox}")),
        "{}",
        out.stdout
    );
    assert_eq!(images(&n).keys().collect::<Vec<_>>(), [&alias]);
    let st = state(&n);
    let img = &st["state"]["images"][&digest];
    assert!(strings(&img["nodes"]).contains(&id), "{st}");
    assert_eq!(strings(&img["references"]), std::slice::from_ref(&alias));
    bolt(&n, &["image", "prune"]);
    assert_eq!(
        names_in(&blobs),
        stored,
        "prune keeps what a reference uses"
    );

    bolt(&n, &["rmi", &alias]);
    assert!(images(&n).is_empty());
    let evs = events(&n);
    let removed = image_events(&evs, "image.removed");
    assert_eq!(removed.last().unwrap()["reference"], alias.as_str());
    assert_eq!(removed.last().unwrap()["digest"], digest.as_str());
    assert!(state(&n)["state"]["images"].get(&digest).is_none());
    assert_eq!(names_in(&blobs), stored, "blobs stay until a prune");

    let out = bolt(&n, &["image", "prune"]);
    assert!(
        out.stdout.starts_with("removed 3 blob(s)"),
        "{}",
        out.stdout
    );
    assert!(names_in(&blobs).is_empty());
    assert!(names_in(&layers).is_empty());

    let err = one_error_line(&n.bolt(&["rmi", &alias]).unwrap());
    assert!(err.contains("no image") && err.contains("404"), "{err}");
}

#[test]
fn an_image_pushed_under_a_new_name_pulls_back_the_same() {
    let Some(reg) = registry("an_image_pushed_under_a_new_name_pulls_back_the_same") else {
        return;
    };
    let digests = fixture_digests();
    let busybox = format!("{reg}/bolt-test/busybox:latest");
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let pushed = format!("{reg}/bolt-e2e/pushed-{unique}:v1");
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a", &[]);
    pull(&a, &busybox);
    bolt(&a, &["tag", &busybox, &pushed]);
    let out = bolt(&a, &["push", &pushed]);
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with(&format!("{pushed}: pushed {}", digests[&busybox])),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(": pushed"), "{}", out.stdout);

    let b = node(dir.path(), "b", &[]);
    let back = pull(&b, &pushed);
    assert_eq!(back["image"]["digest"], digests[&busybox].as_str());
    assert_eq!(back["image"]["reference"], pushed.as_str());

    let err = one_error_line(
        &a.bolt(&["push", &format!("{reg}/bolt-e2e/never-stored:x")])
            .unwrap(),
    );
    assert!(err.contains("no image"), "{err}");
}

#[test]
fn export_then_import_round_trips_the_images() {
    let Some(reg) = registry("export_then_import_round_trips_the_images") else {
        return;
    };
    let digests = fixture_digests();
    let busybox = format!("{reg}/bolt-test/busybox:latest");
    let debian = format!("{reg}/bolt-test/debian:bookworm");
    let dir = tempfile::tempdir().unwrap();
    let a = node(dir.path(), "a", &[]);
    pull(&a, &busybox);
    pull(&a, &debian);
    let tar = dir.path().join("images.tar");
    let layout = dir.path().join("layout");
    let out = bolt(
        &a,
        &[
            "image",
            "export",
            &busybox,
            &debian,
            "-o",
            tar.to_str().unwrap(),
        ],
    );
    assert!(
        out.stdout.starts_with("exported 2 image(s)"),
        "{}",
        out.stdout
    );
    assert!(tar.is_file());
    bolt(
        &a,
        &[
            "image",
            "export",
            &busybox,
            "-o",
            layout.to_str().unwrap(),
            "--format",
            "oci-dir",
        ],
    );
    assert!(layout.join("index.json").is_file());
    let err = one_error_line(
        &a.bolt(&["image", "export", &busybox, "-o", tar.to_str().unwrap()])
            .unwrap(),
    );
    assert!(err.contains("exists"), "{err}");

    let b = node(dir.path(), "b", &[]);
    let out = bolt(&b, &["image", "import", tar.to_str().unwrap()]);
    assert!(
        out.stdout
            .contains(&format!("imported {busybox} ({})", digests[&busybox])),
        "{}",
        out.stdout
    );
    assert_eq!(images(&b), images(&a));
    let evs = events(&b);
    let pulled: BTreeSet<String> = image_events(&evs, "image.pulled")
        .iter()
        .map(|p| p["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        pulled,
        BTreeSet::from([digests[&busybox].clone(), digests[&debian].clone()])
    );

    let c = node(dir.path(), "c", &[]);
    bolt(&c, &["image", "import", "-q", layout.to_str().unwrap()]);
    assert_eq!(images(&c).get(&busybox), Some(&digests[&busybox]));
    let st = state(&c);
    assert!(strings(&st["state"]["images"][&digests[&busybox]]["nodes"]).contains(&node_id(&c)));
}
