//! Pull + unpack of the multi-layer fixture image from the loopback registry into a fresh store,
//! beside `skopeo copy docker://IMAGE oci:DIR:TAG` + `umoci unpack --image DIR:TAG BUNDLE` of the
//! same image, in the same run, alternating, a few rounds each. Goal: Bolt faster than them.
//!
//! `cargo bench -p bolt-bench --bench pull` with `BOLT_TEST_REGISTRY` set (scripts/registry.sh
//! env) and the fixtures pushed (tests/fixtures/build-images.sh). Knobs: `BOLT_BENCH_IMAGE`
//! (default `$BOLT_TEST_REGISTRY/bolt-test/debian:bookworm`), `BOLT_BENCH_ROUNDS` (default 5).
//! Prints a markdown table of medians.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use bolt_bench::{env_u64, median};
use bolt_capsule::image::{ImageStore, PullOptions, StoreConfig};

fn du(p: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One Bolt pull into a fresh store; returns (seconds, bytes on disk).
fn bolt(rt: &tokio::runtime::Runtime, work: &Path, image: &str, durable: bool) -> (f64, u64) {
    let root = work.join(format!("bolt-{}", if durable { "durable" } else { "fast" }));
    let mut cfg = StoreConfig::new(&root);
    cfg.durable = durable;
    let t = Instant::now();
    let store = ImageStore::open(cfg).unwrap();
    let pulled = rt
        .block_on(store.pull(image, &PullOptions::default()))
        .unwrap();
    let s = t.elapsed().as_secs_f64();
    assert!(!pulled.record.layers.is_empty());
    drop(store);
    let size = du(&root);
    std::fs::remove_dir_all(&root).unwrap();
    (s, size)
}

/// skopeo copy + umoci unpack of the same image; returns (copy s, unpack s).
fn peers(work: &Path, image: &str) -> (f64, f64) {
    let oci = work.join("oci");
    let bundle = work.join("bundle");
    let policy = bolt_bench::workspace_root().join("tests/fixtures/policy.json");
    let t = Instant::now();
    let st = Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:bench", oci.display()))
        .status()
        .unwrap();
    assert!(st.success(), "skopeo copy failed");
    let copy = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let st = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:bench", oci.display()))
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(st.success(), "umoci unpack failed");
    let unpack = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&oci).unwrap();
    std::fs::remove_dir_all(&bundle).unwrap();
    (copy, unpack)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("pull: run with `cargo bench -p bolt-bench --bench pull`");
        return;
    }
    let Ok(reg) = std::env::var("BOLT_TEST_REGISTRY") else {
        eprintln!("pull: BOLT_TEST_REGISTRY is not set (eval \"$(scripts/registry.sh env)\" and run tests/fixtures/build-images.sh)");
        return;
    };
    let image = std::env::var("BOLT_BENCH_IMAGE")
        .unwrap_or_else(|_| format!("{reg}/bolt-test/debian:bookworm"));
    let rounds = env_u64("BOLT_BENCH_ROUNDS", 5).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::Builder::new()
        .prefix("bolt-bench-pull-")
        .tempdir()
        .unwrap();

    // Warm the registry's page cache and both code paths once, unmeasured.
    bolt(&rt, work.path(), &image, false);
    peers(work.path(), &image);

    let (mut b_durable, mut b_fast, mut copy, mut unpack, mut both) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut size = 0;
    for round in 0..rounds {
        // Alternate who goes first so neither always inherits a warmer cache.
        let order: [u8; 3] = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for who in order {
            match who {
                0 => {
                    let (s, sz) = bolt(&rt, work.path(), &image, true);
                    b_durable.push(s);
                    size = sz;
                }
                1 => b_fast.push(bolt(&rt, work.path(), &image, false).0),
                _ => {
                    let (c, u) = peers(work.path(), &image);
                    copy.push(c);
                    unpack.push(u);
                    both.push(c + u);
                }
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    println!();
    println!(
        "Pull + unpack of `{image}` ({rounds} rounds, median seconds; store {:.1} MB)",
        size as f64 / 1e6
    );
    println!();
    println!("| what | median s |");
    println!("|---|---|");
    println!(
        "| bolt pull (verify, unpack; fsync + syncfs, the default) | {:.3} |",
        median(&mut b_durable)
    );
    println!(
        "| bolt pull (durable = false) | {:.3} |",
        median(&mut b_fast)
    );
    println!("| skopeo copy + umoci unpack | {:.3} |", median(&mut both));
    println!(
        "| &nbsp;&nbsp;skopeo copy docker:// → oci: | {:.3} |",
        median(&mut copy)
    );
    println!("| &nbsp;&nbsp;umoci unpack | {:.3} |", median(&mut unpack));
}
