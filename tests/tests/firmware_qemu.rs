//! The core on a bare-metal Cortex-M4F: builds the `firmware/` test image for `thumbv7em-none-eabihf`, runs it
//! on QEMU's `mps2-an386` machine (output over semihosting), and compares every value it prints with the same
//! scenario (`firmware/src/scenario.rs`, included here) run on the host: f32 bit patterns must be equal.
//!
//! Needs `qemu-system-arm` and the `thumbv7em-none-eabihf` Rust target; without them the test is skipped
//! with a message, unless `ELASTICFACE_REQUIRE_QEMU=1` (CI), which makes that an error. It prints the image's
//! `.text` size and the stack high-water marks the firmware measured.

mod external;

#[allow(dead_code)] // `PARTS` is the firmware's
#[path = "../../firmware/src/scenario.rs"]
mod scenario;

use std::process::Command;
use std::time::Duration;

use external::{
    available_or_required, cargo, check, compare_lines, repo_root, run_with_limit, runs, rust_target_installed,
    target_dir,
};

const TARGET: &str = "thumbv7em-none-eabihf";

/// The host side of the scenario: records the values in the firmware's output format; measures nothing.
struct Lines(Vec<String>);

impl scenario::Sink for Lines {
    fn value(&mut self, name: &'static str, index: usize, bits: u32) {
        self.0.push(format!("= {name}[{index}] {bits:08x}"));
    }

    fn measure<R>(&mut self, _part: &'static str, f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[test]
fn the_core_on_an_emulated_cortex_m4f_matches_the_host_bit_for_bit() {
    let tools = runs("qemu-system-arm", &["--version"]).and_then(|()| rust_target_installed(TARGET));
    if !available_or_required(
        tools,
        "qemu-system-arm with the thumbv7em-none-eabihf target",
        "ELASTICFACE_REQUIRE_QEMU",
    ) {
        return;
    }
    // A target directory of its own: the one of this test is locked by the `cargo test` running it.
    let target = target_dir().join("firmware");
    check(
        cargo(&repo_root().join("firmware")).args(["build", "--release", "--quiet", "--target-dir"]).arg(&target),
        "building the firmware",
    );
    let image = target.join(TARGET).join("release").join("elasticface-firmware");
    let mut qemu = Command::new("qemu-system-arm");
    qemu.args(["-cpu", "cortex-m4", "-machine", "mps2-an386", "-nographic"])
        .args(["-semihosting-config", "enable=on,target=native", "-kernel"])
        .arg(&image);
    let (ok, out) = run_with_limit(&mut qemu, Duration::from_secs(120));
    assert!(ok && out.lines().last() == Some("done"), "the firmware failed; its output:\n{out}");

    let device: String = out.lines().filter(|l| l.starts_with("= ")).map(|l| format!("{l}\n")).collect();
    let mut host = Lines(Vec::new());
    scenario::run(&mut host);
    let n = compare_lines(&device, &host.0, "the firmware's output on the emulated Cortex-M4F");
    assert!(n > 5000, "only {n} values");
    eprintln!("Cortex-M4F (QEMU mps2-an386) vs host: {n} values, all bit-equal");
    for line in out.lines().filter(|l| l.starts_with("# ")) {
        eprintln!("  {}", &line[2..]);
    }
}
