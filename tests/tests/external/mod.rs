//! What the tests that drive outside programs share: deciding whether a tool is there (or required), building
//! a crate with a nested `cargo`, and running a program with a time limit.

#![allow(dead_code)] // each test uses a part

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The target directory this test was built in (`<target>/<profile>/deps/<test>` is the running executable).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors().nth(3).expect("<target>/<profile>/deps/<exe>").to_path_buf()
}

/// Whether a test that needs `what` runs: `available` says whether it is there. When it is not, the test is
/// skipped with a message, unless the environment variable `require` is `1`, which makes it fail instead
/// (CI sets it where it installed the tool).
pub fn available_or_required(available: Result<(), String>, what: &str, require: &str) -> bool {
    match available {
        Ok(()) => true,
        Err(why) if std::env::var(require).is_ok_and(|v| v == "1") => {
            panic!("{require}=1 but {what} is not available: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED ({what} is not available: {why}; set {require}=1 to make this an error)");
            false
        }
    }
}

/// Whether `program args` runs and exits with success.
pub fn runs(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{program} {}` exited with {s}", args.join(" "))),
        Err(e) => Err(format!("`{program}` cannot be run: {e}")),
    }
}

/// Whether the Rust standard library of `target` is installed (`rustup target add <target>`).
pub fn rust_target_installed(target: &str) -> Result<(), String> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustc cannot be run: {e}"))?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot).join("lib").join("rustlib").join(target).join("lib");
    if lib.is_dir() {
        Ok(())
    } else {
        Err(format!("no standard library for {target} in {} (rustup target add {target})", lib.display()))
    }
}

/// A `cargo` command for a nested build: the cargo that runs this test, with the variables it set for the
/// test removed so that they do not leak into the nested build.
pub fn cargo(dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_PKG_") || key.starts_with("CARGO_CRATE_") || key == "CARGO_MANIFEST_DIR" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `cmd` to completion, failing the test with its output when it fails.
pub fn check(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs `cmd`, killing it after `limit`; returns its exit success and its stdout. Stderr is inherited.
pub fn run_with_limit(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().expect("the stdout reader");
    match status {
        Some(s) => (s.success(), text),
        None => panic!("{cmd:?} ran longer than {limit:?}; its output so far:\n{text}"),
    }
}

/// Compares the `key value` lines of a program's output with the expected ones, value by value, and
/// returns how many were compared. Fails with every difference listed.
pub fn compare_lines(got: &str, want: &[String], what: &str) -> usize {
    let got: Vec<&str> = got.lines().collect();
    let mut diffs = Vec::new();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            diffs.push(format!("line {}: got `{g}`, want `{w}`", i + 1));
        }
    }
    if got.len() != want.len() {
        diffs.push(format!("{} lines, want {}", got.len(), want.len()));
    }
    assert!(diffs.is_empty(), "{what} differs from the host:\n{}", diffs.join("\n"));
    want.len()
}
