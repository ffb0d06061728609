//! `libelasticface_ffi.a`: the C ABI of `elasticface-core` (its `ffi` module) as a static library, with
//! the header `ffi/include/elasticface.h`.
//!
//! Build it and link a C program with it:
//!
//! ```text
//! cargo build --release -p elasticface-ffi
//! cc -std=c11 -Iffi/include ffi/c/demo.c target/release/libelasticface_ffi.a -lm -lpthread -ldl -o demo
//! cargo build --release -p elasticface-ffi --target thumbv7em-none-eabihf   # for Cortex-M4F firmware
//! ```
//!
//! On a hosted target the library carries Rust's standard library, whose panic machinery is never reached
//! (every input is checked) and would abort at the `extern "C"` boundary if it were. On a bare-metal target
//! (`target_os = "none"`) it is `no_std` with the panic handler below; those targets abort on panic, so
//! no unwinding code is linked.
#![no_std]

// The functions are `#[no_mangle] extern "C"` items of the core; naming the crate links them in.
pub use elasticface_core::ffi;

#[cfg(not(target_os = "none"))]
extern crate std;

/// Bare metal: a panic (unreachable on checked input) stops here until a watchdog resets the device.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
