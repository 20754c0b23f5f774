//! The one way a Bolt test skips for a missing prerequisite (root, a host tool, the test
//! registry, a filesystem the host happens to have).
//!
//! Every skip goes through [`skip`]: it prints one line,
//! `SKIPPED <test>: <why> (BOLT_REQUIRE_ROOT_TESTS=1 makes this a failure)`, on stderr and
//! returns `false`, so a test reads `if !bolt_skip::root(TEST) { return; }`. With
//! `BOLT_REQUIRE_ROOT_TESTS=1` (CI, `.ci/run`) it panics instead with
//! `<test>: <why>, and BOLT_REQUIRE_ROOT_TESTS=1 forbids skipping`: nothing is skipped silently.

use std::path::Path;

/// The environment variable that turns every skip into a failure.
pub const REQUIRE: &str = "BOLT_REQUIRE_ROOT_TESTS";

/// Whether skips are failures (`BOLT_REQUIRE_ROOT_TESTS=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE).as_deref() == Ok("1")
}

/// Skips `test` because `why`: prints the `SKIPPED` line and returns `false`; panics under
/// `BOLT_REQUIRE_ROOT_TESTS=1`.
pub fn skip(test: &str, why: &str) -> bool {
    if required() {
        panic!("{test}: {why}, and {REQUIRE}=1 forbids skipping");
    }
    eprintln!("SKIPPED {test}: {why} ({REQUIRE}=1 makes this a failure)");
    false
}

/// `true` when `cond` holds, otherwise [`skip`] with `why`.
pub fn unless(test: &str, cond: bool, why: &str) -> bool {
    cond || skip(test, why)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `true` as root, otherwise a skip: "needs root".
pub fn root(test: &str) -> bool {
    unless(test, is_root(), "needs root")
}

/// Whether `tool` is a file in a `PATH` directory (what `Command::new(tool)` runs).
pub fn has_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
}

/// `true` when `tool` is installed, otherwise a skip: "needs TOOL, which is not installed".
pub fn tool(test: &str, tool: &str) -> bool {
    unless(
        test,
        has_tool(tool),
        &format!("needs {tool}, which is not installed"),
    )
}

/// The value of the environment variable `var` when set and not empty, otherwise a skip:
/// "VAR is not set (HOW)".
pub fn env(test: &str, var: &str, how: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip(test, &format!("{var} is not set ({how})"));
            None
        }
    }
}

/// How to get the test registry: the `how` of [`registry`].
pub const REGISTRY_HOW: &str = "scripts/registry.sh start; eval \"$(scripts/registry.sh env)\"; \
                                tests/fixtures/build-images.sh all";

/// The test registry (`BOLT_TEST_REGISTRY=127.0.0.1:PORT` with the fixtures pushed), or a skip.
pub fn registry(test: &str) -> Option<String> {
    env(test, "BOLT_TEST_REGISTRY", REGISTRY_HOW)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Set only in the child runs of the test below.
    const CHILD: &str = "BOLT_SKIP_SELF_TEST";

    /// The child: skips for a reason no host meets. Does nothing in an ordinary run.
    #[test]
    fn child_skips_for_a_missing_prerequisite() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        if !super::unless("child", false, "needs a prerequisite this host lacks") {
            return;
        }
        unreachable!("the helper let a test run without its prerequisite");
    }

    fn run_child(require: &str) -> (bool, String) {
        let exe = std::env::current_exe().expect("the test binary");
        let out = Command::new(exe)
            .args([
                "--exact",
                "tests::child_skips_for_a_missing_prerequisite",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env(super::REQUIRE, require)
            .output()
            .expect("run the test binary");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    #[test]
    fn under_bolt_require_root_tests_a_skip_fails_the_test() {
        let (ok, text) = run_child("1");
        assert!(
            !ok,
            "the child passed under BOLT_REQUIRE_ROOT_TESTS=1:\n{text}"
        );
        assert!(
            text.contains("child: needs a prerequisite this host lacks, and BOLT_REQUIRE_ROOT_TESTS=1 forbids skipping"),
            "{text}"
        );
        assert!(!text.contains("SKIPPED child"), "{text}");
    }

    #[test]
    fn without_it_a_skip_passes_with_one_skipped_line() {
        let (ok, text) = run_child("0");
        assert!(
            ok,
            "the child failed without BOLT_REQUIRE_ROOT_TESTS=1:\n{text}"
        );
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("SKIPPED")).collect();
        assert_eq!(
            lines,
            ["SKIPPED child: needs a prerequisite this host lacks (BOLT_REQUIRE_ROOT_TESTS=1 makes this a failure)"],
            "{text}"
        );
    }
}
