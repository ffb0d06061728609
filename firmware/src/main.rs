//! The bare-metal test image: `elasticface-core` on a Cortex-M4F with no OS and no allocator.
//!
//! Runs [`scenario::run`] and prints, over semihosting:
//!
//! - `= name[index] xxxxxxxx`: every recorded value (f32 bit patterns, integers, codes), which the host test
//!   (`tests/tests/firmware_qemu.rs`) compares with the same scenario run on the host;
//! - `# key value`: facts about the image: `.text` size, static RAM, the stack high-water mark of each
//!   measured part;
//! - `done`, then exits QEMU with status 0 (1 on a panic).
//!
//! Stack high-water marks are measured by painting: before each measured call the free stack below the
//! current stack pointer is filled with a pattern, after it the deepest word that no longer holds the
//! pattern marks how far the call reached.
//!
//! Run it: `cd firmware && cargo run --release` (needs `qemu-system-arm` and the `thumbv7em-none-eabihf`
//! target).
#![no_std]
#![no_main]

mod scenario;

use core::fmt::{self, Write};
use core::ptr;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hio};

use scenario::{Sink, PARTS};

/// What a painted stack word holds until something writes it.
const PAINT: u32 = 0xC0DE_5AFE;

/// How far below the stack pointer a measurement paints: a part that goes deeper is reported as at least
/// this much.
const PAINT_DEPTH: usize = 256 * 1024;

/// Bytes just below the stack pointer that are not painted, for the painting code itself.
const GUARD: usize = 64;

extern "C" {
    /// Start and end of `.text` (cortex-m-rt's `link.x`).
    static __stext: u32;
    static __etext: u32;
    /// Start and end of `.rodata`.
    static __srodata: u32;
    static __erodata: u32;
    /// Start of `.data` and end of `.bss`: the static RAM.
    static __sdata: u32;
    static __ebss: u32;
    /// The first address after the static data: the stack may grow down to here.
    static __sheap: u32;
    /// The initial stack pointer.
    static _stack_start: u32;
}

/// The address of a linker symbol (taking it reads nothing).
macro_rules! addr {
    ($sym:ident) => {
        ptr::addr_of!($sym) as usize
    };
}

/// One line of output, formatted in place and written with one semihosting call.
struct Line {
    buf: [u8; 128],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Self { buf: [0; 128], len: 0 }
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Prints the values and measures the stack.
struct Semihosting {
    out: hio::HostStream,
    /// Deepest stack use of each part of [`PARTS`], in bytes, from the stack pointer of the caller of
    /// [`Sink::measure`] (a use within `GUARD` bytes reads as `GUARD`).
    stack: [usize; PARTS.len()],
    /// Whether a part reached the deepest painted word (its use is then at least `stack`).
    saturated: [bool; PARTS.len()],
}

impl Semihosting {
    fn line(&mut self, args: fmt::Arguments<'_>) {
        let mut line = Line::new();
        if line.write_fmt(args).is_err() || line.write_str("\n").is_err() {
            panic!("an output line is longer than {} bytes", line.buf.len());
        }
        if self.out.write_all(&line.buf[..line.len]).is_err() {
            panic!("semihosting write failed");
        }
    }
}

/// Calls `f` out of line, so that its locals are below the stack pointer its caller measures from.
#[inline(never)]
fn call<R>(f: impl FnOnce() -> R) -> R {
    f()
}

impl Sink for Semihosting {
    fn value(&mut self, name: &'static str, index: usize, bits: u32) {
        self.line(format_args!("= {name}[{index}] {bits:08x}"));
    }

    #[inline(never)]
    fn measure<R>(&mut self, part: &'static str, f: impl FnOnce() -> R) -> R {
        let sp = cortex_m::register::msp::read() as usize;
        let bottom = sp.saturating_sub(PAINT_DEPTH).max(addr!(__sheap)).next_multiple_of(4);
        let top = (sp - GUARD) & !3;
        // The loops below touch no stack: they run in registers, in this frame.
        let mut a = bottom;
        while a < top {
            // SAFETY: [bottom, top) is free stack: below this frame (and its guard), above the static data.
            unsafe { ptr::write_volatile(a as *mut u32, PAINT) };
            a += 4;
        }
        let result = call(f);
        let mut deepest = bottom;
        // SAFETY: as above; reading the words back.
        while deepest < top && unsafe { ptr::read_volatile(deepest as *const u32) } == PAINT {
            deepest += 4;
        }
        if let Some(i) = PARTS.iter().position(|&p| p == part) {
            // A call that wrote the deepest painted word may have gone deeper still.
            self.saturated[i] |= deepest == bottom;
            self.stack[i] = self.stack[i].max(sp - deepest);
        }
        result
    }
}

#[entry]
fn main() -> ! {
    let Ok(out) = hio::hstdout() else { exit(debug::EXIT_FAILURE) };
    let mut sink = Semihosting { out, stack: [0; PARTS.len()], saturated: [false; PARTS.len()] };
    sink.line(format_args!("# text_bytes {}", addr!(__etext) - addr!(__stext)));
    sink.line(format_args!("# rodata_bytes {}", addr!(__erodata) - addr!(__srodata)));
    sink.line(format_args!("# static_ram_bytes {}", addr!(__ebss) - addr!(__sdata)));
    sink.line(format_args!("# stack_available_bytes {}", addr!(_stack_start) - addr!(__sheap)));

    scenario::run(&mut sink);

    for ((part, bytes), saturated) in PARTS.iter().zip(sink.stack).zip(sink.saturated) {
        let at_least = if saturated { ">=" } else { "" };
        sink.line(format_args!("# stack_{part}_bytes {at_least}{bytes}"));
    }
    sink.line(format_args!("done"));
    exit(debug::EXIT_SUCCESS)
}

/// Ends the emulation with `status` (semihosting `SYS_EXIT`); on a board without a debugger attached, sleeps.
fn exit(status: debug::ExitStatus) -> ! {
    debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cortex_m_semihosting::hprintln!("panic: {}", info);
    exit(debug::EXIT_FAILURE)
}
