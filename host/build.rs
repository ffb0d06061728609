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

fn validate(name: &str, source: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string_with_path(source, name))?;
    let mut validator =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    validator.validate(&module).map_err(|e| e.emit_to_string_with_path(source, name))?;
    Ok(())
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    entries.sort();
    let mut failed = Vec::new();
    for path in entries {
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
        let mut modules = vec![
            (format!("conv2d.wgsl ({shape})"), compose_f32(&base, shape)),
            (format!("conv2d.wgsl (f16 operands, {shape})"), compose_emulated(&base, shape)),
        ];
        for side in FragmentSide::ALL {
            modules.extend([
                (
                    format!("conv2d.wgsl + conv2d_coop.wgsl.in ({shape}, {side} fragments)"),
                    compose_coop(&base, &fragment, shape, Fragments::Cooperative, side),
                ),
                (
                    format!("conv2d.wgsl + conv2d_coop.wgsl.in ({shape}, {side} fragments as loops)"),
                    compose_coop(&base, &fragment, shape, Fragments::Loops, side),
                ),
            ]);
        }
        for (name, module) in modules.into_iter().map(|(name, module)| {
            match name.contains("conv2d_coop") || name.contains("f16 operands") {
                true => (name, module.and_then(|m| act_f16(&m))),
                false => (name, module),
            }
        }) {
            match module {
                Ok(source) => {
                    if let Err(e) = validate(&name, &source) {
                        failed.push(e);
                    }
                }
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
    }
    if !failed.is_empty() {
        panic!("invalid WGSL:\n{}", failed.join("\n"));
    }
}
