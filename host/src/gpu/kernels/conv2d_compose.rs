// Builds the WGSL of the convolution kernels from `shaders/conv2d.wgsl`: the f32 module with a given TM, and the
// mixed-precision module with `shaders/conv2d_coop.wgsl.in`'s tile arithmetic in place of the f32 one. Plain
// `std` code, included by `conv2d.rs` and by the build script (which validates both modules with naga).

/// The tiled kernels of `conv2d.wgsl`: the three convolutions and `gemm_batched`.
const KERNELS: usize = 4;

/// The line of `conv2d.wgsl` that sets the rows per invocation.
pub const TM_LINE: &str = "const TM: u32 = 4u;";

/// `base` with `TM` set to `tm`.
pub fn compose_f32(base: &str, tm: u32) -> Result<String, String> {
    if !base.contains(TM_LINE) {
        return Err(format!("conv2d.wgsl no longer declares `{TM_LINE}`"));
    }
    Ok(base.replace(TM_LINE, &format!("const TM: u32 = {tm}u;")))
}

/// The line of `conv2d.wgsl` that turns the f16 rounding of the tiles' operands off.
pub const F16_OPERANDS_LINE: &str = "const F16_OPERANDS: bool = false;";

/// The mixed-precision arithmetic without cooperative matrices: `base` with TM = 8 and every tile operand rounded
/// to f16, multiplied by the f32 tile arithmetic.
pub fn compose_emulated(base: &str) -> Result<String, String> {
    if !base.contains(F16_OPERANDS_LINE) {
        return Err(format!("conv2d.wgsl no longer declares `{F16_OPERANDS_LINE}`"));
    }
    Ok(compose_f32(base, 8)?.replace(F16_OPERANDS_LINE, "const F16_OPERANDS: bool = true;"))
}

/// The mixed-precision module: `base` with TM = 8 and the sections of `fragment` (`// @@ ENABLE`, `TILES`,
/// `CLEAR`, `MULTIPLY`, `FINISH`) in place of the f32 tile arithmetic.
pub fn compose_coop(base: &str, fragment: &str) -> Result<String, String> {
    let section = |name: &str| -> Result<&str, String> {
        let marker = format!("// @@ {name}\n");
        let start = fragment.find(&marker).ok_or(format!("conv2d_coop.wgsl.in has no `{}`", marker.trim()))?;
        let body = &fragment[start + marker.len()..];
        Ok(&body[..body.find("// @@ ").unwrap_or(body.len())])
    };
    let mut s = compose_f32(base, 8)?;
    let (begin, end) = ("// @@ TILES BEGIN", "// @@ TILES END\n");
    let (b, e) = match (s.find(begin), s.find(end)) {
        (Some(b), Some(e)) if b < e => (b, e + end.len()),
        _ => return Err("conv2d.wgsl has no `@@ TILES BEGIN` ... `@@ TILES END` section".into()),
    };
    s.replace_range(b..e, section("TILES")?);
    for (call, name) in [("clear_acc();\n", "CLEAR"), ("multiply_tiles(lid);\n", "MULTIPLY"), ("finish_tiles(lid);\n", "FINISH")]
    {
        let with_indent: Vec<(usize, usize)> = s
            .match_indices(call)
            .map(|(i, _)| {
                let line = s[..i].rfind('\n').map_or(0, |n| n + 1);
                (line, i + call.len())
            })
            .collect();
        if with_indent.len() != KERNELS {
            return Err(format!("conv2d.wgsl calls `{}` {} times, not {KERNELS}", call.trim(), with_indent.len()));
        }
        let body = section(name)?;
        for (from, to) in with_indent.into_iter().rev() {
            s.replace_range(from..to, body);
        }
    }
    // Cooperative operations need workgroup-uniform control flow, which naga cannot prove after the early return
    // of a workgroup past the last tile. That return only saves work: such a workgroup's columns start past
    // COLS, so every load it makes is out of bounds (zero) and every write is skipped.
    let early_return = "    if !tile_exists(wid, nwg) {\n        return;\n    }\n";
    if s.matches(early_return).count() != KERNELS {
        return Err("conv2d.wgsl's kernels no longer begin with `if !tile_exists(wid, nwg) { return; }`".into());
    }
    let s = s.replace(early_return, "");
    Ok(format!("{}{s}", section("ENABLE")?))
}
