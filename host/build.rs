//! Parses and validates every WGSL shader in `shaders/` with naga, so that a shader error fails `cargo build`
//! with the file, line and message, instead of failing at run time on a user's machine.

use std::path::Path;

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
        let module = match naga::front::wgsl::parse_str(&source) {
            Ok(m) => m,
            Err(e) => {
                failed.push(e.emit_to_string_with_path(&source, &name));
                continue;
            }
        };
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        if let Err(e) = validator.validate(&module) {
            failed.push(e.emit_to_string_with_path(&source, &name));
        }
    }
    if !failed.is_empty() {
        panic!("invalid WGSL:\n{}", failed.join("\n"));
    }
}
