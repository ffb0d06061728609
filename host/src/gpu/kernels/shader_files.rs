// What the build script (`host/build.rs`, which includes this file) and the backends test (`backends.rs`) both
// read of the shaders: the WGSL files of `shaders/`, and the workgroup memory a module declares (with naga, a
// build and dev dependency, not one of the library).

/// The `.wgsl` files of `shaders/`, sorted by name.
pub fn shader_files() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    files.sort();
    files
}

/// Bytes of workgroup memory `module` declares.
pub fn workgroup_bytes(module: &naga::Module) -> Result<u32, String> {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).map_err(|e| e.to_string())?;
    Ok(module
        .global_variables
        .iter()
        .filter(|(_, var)| var.space == naga::AddressSpace::WorkGroup)
        .map(|(_, var)| layouter[var.ty].size)
        .sum())
}
