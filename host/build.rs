//! Parses and validates every WGSL shader in `shaders/` with naga, so that a shader error fails `cargo build`
//! with the file, line and message, instead of failing at run time on a user's machine; likewise the modules the
//! host composes from them (the convolution's f32 and mixed-precision variants).

use std::path::Path;

// Not every item of the composition is used here.
#[allow(dead_code)]
mod compose {
    include!("src/gpu/kernels/conv2d_compose.rs");
}
use compose::{act_f16, compose_coop, compose_emulated, compose_f32, FragmentSide, Fragments, TileShape};

mod shader_files {
    include!("src/gpu/kernels/shader_files.rs");
}
// `workgroup_bytes`: what the host's tile formulas (`TileShape::f32_bytes`, `coop_bytes`), which decide the tiles an
// adapter can run, must equal for every composed convolution module.
use shader_files::{shader_files, workgroup_bytes};

fn validate(name: &str, source: &str) -> Result<naga::Module, String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string_with_path(source, name))?;
    let mut validator =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    validator.validate(&module).map_err(|e| e.emit_to_string_with_path(source, name))?;
    Ok(module)
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-changed=src/gpu/kernels/shader_files.rs");
    let mut failed = Vec::new();
    for path in shader_files() {
        println!("cargo:rerun-if-changed={}", path.display());
        let source = std::fs::read_to_string(&path).expect("shader is UTF-8");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Err(e) = validate(&name, &source) {
            failed.push(e);
        }
    }
    // The modules the host composes from conv2d.wgsl, in every tile shape: f32, mixed precision on cooperative
    // matrices, and mixed precision without them (the mixed ones with f16 activations).
    let fragment_path = dir.join("conv2d_coop.wgsl.in");
    println!("cargo:rerun-if-changed={}", fragment_path.display());
    println!("cargo:rerun-if-changed=src/gpu/kernels/conv2d_compose.rs");
    let base = std::fs::read_to_string(dir.join("conv2d.wgsl")).expect("conv2d.wgsl");
    let fragment = std::fs::read_to_string(&fragment_path).expect("conv2d_coop.wgsl.in");
    for shape in TileShape::ALL {
        // (name, source, the workgroup bytes the host's formula gives)
        let mut modules = vec![
            (format!("conv2d.wgsl ({shape})"), compose_f32(&base, shape), shape.f32_bytes()),
            (format!("conv2d.wgsl (f16 operands, {shape})"), compose_emulated(&base, shape), shape.f32_bytes()),
        ];
        for side in FragmentSide::ALL {
            modules.extend([
                (
                    format!("conv2d.wgsl + conv2d_coop.wgsl.in ({shape}, {side} fragments)"),
                    compose_coop(&base, &fragment, shape, Fragments::Cooperative, side),
                    shape.coop_bytes(),
                ),
                (
                    format!("conv2d.wgsl + conv2d_coop.wgsl.in ({shape}, {side} fragments as loops)"),
                    compose_coop(&base, &fragment, shape, Fragments::Loops, side),
                    shape.coop_bytes(),
                ),
            ]);
        }
        for (name, module, expected_bytes) in modules.into_iter().map(|(name, module, bytes)| {
            match name.contains("conv2d_coop") || name.contains("f16 operands") {
                true => (name, module.and_then(|m| act_f16(&m)), bytes),
                false => (name, module, bytes),
            }
        }) {
            match module.and_then(|source| validate(&name, &source)).and_then(|m| workgroup_bytes(&m)) {
                Ok(bytes) if bytes != expected_bytes => failed.push(format!(
                    "{name}: declares {bytes} bytes of workgroup memory, the host's formula says {expected_bytes}"
                )),
                Ok(_) => {}
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
    }
    if !failed.is_empty() {
        panic!("invalid WGSL:\n{}", failed.join("\n"));
    }
}
