//! Writing files so that a crash or a full disk leaves the old file or the new one, never a part of one: the bytes
//! go to a temporary file beside the target, which is then renamed over it (a link at the target is replaced, not
//! followed).

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

/// Removes the file `path`, if there is one: whether it was there; an error only where it could not be removed.
pub fn remove_if_present(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Writes `bytes` to `path` durably: replaced as the module says, the temporary file synced before the rename and
/// the folder after it where the platform can sync a folder (not Windows), so the new file is on disk when this
/// returns. For checkpoints, reports, run settings.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, bytes, true)
}

/// Writes `bytes` to `path`, replaced as the module says but not synced: for many small files (one crop a face),
/// where a sync each would cost more than the writing.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    replace(path, bytes, false)
}

/// A temporary file beside `path` (its folder created if needed), renamed over `path`; with `durable`, the file is
/// synced before the rename and the folder after it.
fn replace(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file_name = path.file_name().ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if durable {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write {}: {e}", path.display())
    })
}
