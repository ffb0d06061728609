// Builds the WGSL of the convolution kernels from `shaders/conv2d.wgsl`: the f32 module with a given tile shape,
// its emulation of mixed precision, and the mixed-precision module with `shaders/conv2d_coop.wgsl.in`'s tile
// arithmetic (and the cooperative-matrix code generated here for the tile shape) in place of the f32 one. Plain
// `std` code, included by `conv2d.rs` and by the build script (which validates every module with naga).

/// The tiled kernels of `conv2d.wgsl`: the three convolutions and `gemm_batched`, and the `_vec4` twin of each.
const KERNELS: usize = 8;

/// The workgroup tile of the convolution kernels: `rows x cols` elements of C per workgroup of 256 invocations,
/// the depth walked `depth` at a time, through `buffers` copies of the staged tiles. Written as
/// `ROWSxCOLSxDEPTH` (one buffer), e.g. `128x64x16`, or `ROWSxCOLSxDEPTHx2` (double-buffered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileShape {
    /// Rows of C per tile (`BM`): 64 or 128, i.e. 4 or 8 per invocation (`TM`).
    pub rows: u32,
    /// Columns of C per tile (`BN`): 64 or 128, i.e. 4 or 8 per invocation (`TN`).
    pub cols: u32,
    /// Depth step (`BK`): 16 or 32.
    pub depth: u32,
    /// Copies of the staged A and B tiles in workgroup memory (`BUFFERS`): 1, with two barriers per depth step
    /// (one before the tiles are read, one before they are overwritten), or 2, with one (each step fills the
    /// copy the step before last read; see PIPELINE in `conv2d.wgsl`). The sums are the same bit for bit.
    pub buffers: u32,
}

/// The shape of `TileShape::ALL[i]`: the bits of `i` choose rows, columns, depth and buffers.
const fn nth_shape(i: usize) -> TileShape {
    const fn pick(i: usize, bit: usize, unset: u32, set: u32) -> u32 {
        if i & bit == 0 { unset } else { set }
    }
    TileShape {
        rows: pick(i, 4, 64, 128),
        cols: pick(i, 2, 64, 128),
        depth: pick(i, 1, 16, 32),
        buffers: pick(i, 8, 1, 2),
    }
}

impl TileShape {
    /// Every shape the kernels are written for: the 8 single-buffered ones, then their double-buffered forms.
    pub const ALL: [TileShape; 16] = {
        let mut all = [nth_shape(0); 16];
        let mut i = 1;
        while i < 16 {
            all[i] = nth_shape(i);
            i += 1;
        }
        all
    };

    /// The single-buffered shape of `rows x cols x depth`.
    pub const fn new(rows: u32, cols: u32, depth: u32) -> Self {
        Self { rows, cols, depth, buffers: 1 }
    }

    /// This shape with its staged tiles double-buffered.
    pub const fn double_buffered(self) -> Self {
        Self { buffers: 2, ..self }
    }

    /// Errors unless the kernels are written for this shape.
    pub fn validate(&self) -> Result<(), String> {
        if Self::ALL.contains(self) {
            Ok(())
        } else {
            Err(format!("tile {self}: rows and columns must be 64 or 128, the depth 16 or 32, the buffers 1 or 2"))
        }
    }

    /// Rows of C per invocation (`TM`).
    pub fn rows_per_thread(&self) -> u32 {
        self.rows / 16
    }

    /// Columns of C per invocation (`TN`).
    pub fn cols_per_thread(&self) -> u32 {
        self.cols / 16
    }

    /// The same columns, depth and buffers on 64-row tiles.
    pub fn short(&self) -> Self {
        Self { rows: 64, ..*self }
    }

    /// Workgroup memory of the f32 tiles: `buffers` copies of a_tile (BK x (BM/4 + 1) vec4s) and b_tile
    /// (BK x (BN/4 + 1) vec4s). The build script checks it against what the composed modules declare.
    pub fn f32_bytes(&self) -> u32 {
        self.buffers * 16 * self.depth * (self.rows / 4 + 1 + self.cols / 4 + 1)
    }

    /// Workgroup memory of the cooperative-matrix tiles: a_h (f16, BM x (buffers * BK + 8)), `buffers` copies of
    /// b_h (f16, BK x (BN + 8)), and c_s (f32, the staging block of the epilogue), as `conv2d_coop.wgsl.in` declares
    /// them (checked by the build script).
    pub fn coop_bytes(&self) -> u32 {
        2 * self.rows * (self.buffers * self.depth + 8)
            + self.buffers * 2 * self.depth * (self.cols + 8)
            + 4 * COOP_STAGE_ROWS * COOP_STAGE_COLS
    }
}

impl std::fmt::Display for TileShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.rows, self.cols, self.depth)?;
        if self.buffers != 1 {
            write!(f, "x{}", self.buffers)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for TileShape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || format!("tile `{s}`: expected ROWSxCOLSxDEPTH or ROWSxCOLSxDEPTHx2, e.g. 128x64x16");
        let numbers: Vec<u32> = s.split('x').map(|n| n.parse()).collect::<Result<_, _>>().map_err(|_| expected())?;
        let shape = match numbers[..] {
            [rows, cols, depth] => TileShape::new(rows, cols, depth),
            [rows, cols, depth, buffers] => TileShape { rows, cols, depth, buffers },
            _ => return Err(expected()),
        };
        shape.validate()?;
        Ok(shape)
    }
}

/// The lines of `conv2d.wgsl` that set the tile shape.
pub const SHAPE_LINES: [&str; 4] =
    ["const TM: u32 = 4u;", "const TN: u32 = 4u;", "const BK: u32 = 16u;", "const BUFFERS: u32 = 1u;"];

/// `base` with the tile shape `shape`.
pub fn compose_f32(base: &str, shape: TileShape) -> Result<String, String> {
    shape.validate()?;
    let mut s = base.to_string();
    let values = [shape.rows_per_thread(), shape.cols_per_thread(), shape.depth, shape.buffers];
    for (line, value) in SHAPE_LINES.iter().zip(values) {
        if !s.contains(line) {
            return Err(format!("conv2d.wgsl no longer declares `{line}`"));
        }
        let name = &line[..line.find(':').unwrap_or(0)];
        s = s.replace(line, &format!("{name}: u32 = {value}u;"));
    }
    Ok(s)
}

/// The line of `conv2d.wgsl` that declares the storage of the activations (see ACTIVATIONS there).
pub const ACT_LINE: &str = "alias Act = f32;";

/// `module` (a composition of `conv2d.wgsl`) with its activations stored as f16: the mixed-precision modules.
/// Enables f16 where the module does not already.
pub fn act_f16(module: &str) -> Result<String, String> {
    if !module.contains(ACT_LINE) {
        return Err(format!("conv2d.wgsl no longer declares `{ACT_LINE}`"));
    }
    let module = module.replace(ACT_LINE, "alias Act = f16;");
    Ok(if module.contains("enable f16;") { module } else { format!("enable f16;\n{module}") })
}

/// The line of `conv2d.wgsl` that turns the f16 rounding of the tiles' operands off.
pub const F16_OPERANDS_LINE: &str = "const F16_OPERANDS: bool = false;";

/// The mixed-precision arithmetic without cooperative matrices: `base` with the tile shape `shape` and every tile
/// operand rounded to f16, multiplied by the f32 tile arithmetic.
pub fn compose_emulated(base: &str, shape: TileShape) -> Result<String, String> {
    if !base.contains(F16_OPERANDS_LINE) {
        return Err(format!("conv2d.wgsl no longer declares `{F16_OPERANDS_LINE}`"));
    }
    Ok(compose_f32(base, shape)?.replace(F16_OPERANDS_LINE, "const F16_OPERANDS: bool = true;"))
}

/// The block of C (rows x columns) that the cooperative-matrix epilogue stages through workgroup memory at a
/// time (`STAGE_ROWS`, `STAGE_COLS` in `conv2d_coop.wgsl.in`).
pub const COOP_STAGE_ROWS: u32 = 64;
pub const COOP_STAGE_COLS: u32 = 32;

/// The cooperative-matrix fragments the mixed-precision module multiplies: square, f16 operands and f32
/// accumulators, on subgroups of 32 invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FragmentSide {
    /// 16 x 16 x 16: NVIDIA's tensor cores through Vulkan's cooperative matrices.
    Sixteen,
    /// 8 x 8 x 8: Apple's simdgroup matrices through Metal.
    Eight,
}

impl FragmentSide {
    /// Both sides, the larger first.
    pub const ALL: [FragmentSide; 2] = [FragmentSide::Sixteen, FragmentSide::Eight];

    /// Rows (and columns, and depth) of a fragment.
    pub fn n(self) -> u32 {
        match self {
            FragmentSide::Sixteen => 16,
            FragmentSide::Eight => 8,
        }
    }
}

impl std::fmt::Display for FragmentSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.n();
        write!(f, "{n}x{n}x{n}")
    }
}

/// How the fragments of the mixed-precision module are held and multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragments {
    /// Cooperative matrices (tensor cores): what mixed precision runs.
    Cooperative,
    /// The same layout and calls with the fragment operations as plain loops (the LOOPS section of
    /// `conv2d_coop.wgsl.in`: each of a subgroup's 32 invocations holds 1/32 of each accumulator, 8 elements of a
    /// 16 x 16 one or 2 of an 8 x 8 one, and multiplies from the staged tiles where the loaded fragments point):
    /// slower, for testing the generated layout, its staging and epilogue, on adapters without cooperative
    /// matrices.
    Loops,
}

/// The cooperative-matrix sections for `shape` with fragments of `side` (see `conv2d_coop.wgsl.in`, LAYOUT):
/// `(CLEAR, MULTIPLY, FINISH)`. Subgroup `s` (of 8) holds the 16 x 16 blocks at rows `(s / 2) * 16 + 64 g` and
/// columns `(s % 2) * 16 + 32 f` (`g < TM / 4`, `f < TN / 2`), each as one 16 x 16 fragment or 2 x 2 fragments of
/// 8 x 8, in accumulators `c{g}_{f}_{i}{j}` (fragment `(i, j)` of the block): each 64 x 32 block of the tile is
/// spread over all 8 subgroups, so that the epilogue can stage one block at a time. MULTIPLY reads the depth rows
/// `buf_row ..` of the staged tiles (the buffer of the depth step, see `conv2d.wgsl`), `side` at a time.
pub fn coop_sections(shape: TileShape, fragments: Fragments, side: FragmentSide) -> (String, String, String) {
    let n = side.n();
    let (gs, fs, ks, per) = (shape.rows / 64, shape.cols / 32, shape.depth / n, 16 / n);
    let coop = fragments == Fragments::Cooperative;
    let mat = |elem: &str, role: &str| format!("coop_mat{n}x{n}<{elem}, {role}>");
    let zero = if coop { format!("{}()", mat("f32", "C")) } else { "Fragment()".to_string() };
    let load_a = |i: &str| match coop {
        true => format!("coopLoadT<{}>(&a_h[{i}], LDA)", mat("f16", "A")),
        false => format!("fragment_load_a({i})"),
    };
    let load_b = |i: &str| match coop {
        true => format!("coopLoadT<{}>(&b_h[{i}], LDB)", mat("f16", "B")),
        false => format!("fragment_load_b({i})"),
    };
    let mma = |a: &str, b: &str, c: &str| match coop {
        true => format!("coopMultiplyAdd({a}, {b}, {c})"),
        false => format!("fragment_multiply_add({a}, {b}, {c}, lid)"),
    };
    let store = |c: &str, i: &str| match coop {
        true => format!("coopStoreT({c}, &c_s[{i}], STAGE_COLS)"),
        false => format!("fragment_store({c}, {i}, lid)"),
    };
    let mut clear = String::from("    let sg_r = ((lid / 32u) / 2u) * 16u;\n");
    clear += "    let sg_q = ((lid / 32u) % 2u) * 16u;\n";
    for g in 0..gs {
        for f in 0..fs {
            for (i, j) in (0..per).flat_map(|i| (0..per).map(move |j| (i, j))) {
                clear += &format!("    var c{g}_{f}_{i}{j} = {zero};\n");
            }
        }
    }
    let mut multiply = String::new();
    for k in 0..ks {
        multiply += "        {\n";
        for (g, i) in (0..gs).flat_map(|g| (0..per).map(move |i| (g, i))) {
            let row = 64 * g + n * i;
            multiply += &format!("            let ia{g}{i} = (sg_r + {row}u) * LDA + buf_row + {}u;\n", n * k);
            multiply += &format!("            let a{g}{i} = {};\n", load_a(&format!("ia{g}{i}")));
        }
        for (f, j) in (0..fs).flat_map(|f| (0..per).map(move |j| (f, j))) {
            let col = 32 * f + n * j;
            multiply += &format!("            let ib{f}{j} = (buf_row + {}u) * LDB + sg_q + {col}u;\n", n * k);
            multiply += &format!("            let b{f}{j} = {};\n", load_b(&format!("ib{f}{j}")));
        }
        for g in 0..gs {
            for f in 0..fs {
                for (i, j) in (0..per).flat_map(|i| (0..per).map(move |j| (i, j))) {
                    let c = format!("c{g}_{f}_{i}{j}");
                    multiply += &format!("            {c} = {};\n", mma(&format!("a{g}{i}"), &format!("b{f}{j}"), &c));
                }
            }
        }
        multiply += "        }\n";
    }
    // Block (g, f), rows 64 g .., columns 32 f ..: every subgroup stores its fragments of the block, then the
    // invocations whose 4 columns lie in it (tx / 8 = f % 2, in the 64-column group f / 2 of `acc`) read their
    // 4 x 4 elements.
    let mut finish = String::from("    {\n        let tx = lid % 16u;\n        let ty = lid / 16u;\n");
    finish += "        let s0 = sg_r * STAGE_COLS + sg_q;\n";
    for g in 0..gs {
        for f in 0..fs {
            for (i, j) in (0..per).flat_map(|i| (0..per).map(move |j| (i, j))) {
                let at = format!("s0 + {}u", n * i * COOP_STAGE_COLS + n * j);
                finish += &format!("        {};\n", store(&format!("c{g}_{f}_{i}{j}"), &at));
            }
            finish += "        workgroupBarrier();\n";
            finish += &format!("        if tx / 8u == {}u {{\n", f % 2);
            finish += "            for (var e = 0u; e < 4u; e++) {\n";
            finish += "                let r = (ty * 4u + e) * STAGE_COLS + (tx % 8u) * 4u;\n";
            let acc = format!("acc[({}u + e) * (TN / 4u) + {}u]", 4 * g, f / 2);
            finish += &format!("                {acc} = vec4<f32>(c_s[r], c_s[r + 1u], c_s[r + 2u], c_s[r + 3u]);\n");
            finish += "            }\n        }\n        workgroupBarrier();\n";
        }
    }
    finish += "    }\n";
    (clear, multiply, finish)
}

/// The line of the LOOPS section of `conv2d_coop.wgsl.in` that sets the side of its fragments.
pub const LOOPS_SIDE_LINE: &str = "const FRAG: u32 = 16u;";

/// The mixed-precision module: `base` with the tile shape `shape` and the sections of `fragment`
/// (`// @@ ENABLE`, `TILES`, and for [`Fragments::Loops`] `F16` and `LOOPS` instead of `ENABLE`) and of
/// [`coop_sections`] for fragments of `side` in place of the f32 tile arithmetic.
pub fn compose_coop(
    base: &str,
    fragment: &str,
    shape: TileShape,
    fragments: Fragments,
    side: FragmentSide,
) -> Result<String, String> {
    let section = |name: &str| -> Result<&str, String> {
        let marker = format!("// @@ {name}\n");
        let start = fragment.find(&marker).ok_or(format!("conv2d_coop.wgsl.in has no `{}`", marker.trim()))?;
        let body = &fragment[start + marker.len()..];
        Ok(&body[..body.find("// @@ ").unwrap_or(body.len())])
    };
    let mut s = compose_f32(base, shape)?;
    let (begin, end) = ("// @@ TILES BEGIN", "// @@ TILES END\n");
    let (b, e) = match (s.find(begin), s.find(end)) {
        (Some(b), Some(e)) if b < e => (b, e + end.len()),
        _ => return Err("conv2d.wgsl has no `@@ TILES BEGIN` ... `@@ TILES END` section".into()),
    };
    let tiles = match fragments {
        Fragments::Cooperative => section("TILES")?.to_string(),
        Fragments::Loops => {
            let loops = section("LOOPS")?;
            if !loops.contains(LOOPS_SIDE_LINE) {
                return Err(format!("conv2d_coop.wgsl.in's LOOPS no longer declares `{LOOPS_SIDE_LINE}`"));
            }
            let loops = loops.replace(LOOPS_SIDE_LINE, &format!("const FRAG: u32 = {}u;", side.n()));
            format!("{}{loops}", section("TILES")?)
        }
    };
    s.replace_range(b..e, &tiles);
    let (clear, multiply, finish) = coop_sections(shape, fragments, side);
    let calls =
        [("clear_acc();\n", clear), ("multiply_tiles(lid, buf_row);\n", multiply), ("finish_tiles(lid);\n", finish)];
    for (call, body) in calls {
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
        for (from, to) in with_indent.into_iter().rev() {
            s.replace_range(from..to, &body);
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
    let enable = match fragments {
        Fragments::Cooperative => section("ENABLE")?,
        Fragments::Loops => section("F16")?,
    };
    Ok(format!("{enable}{s}"))
}
