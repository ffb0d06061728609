//! `elasticface selftest`: the PyTorch reference vectors run through our code, tensor by tensor.
//!
//! Three reference files, each checked by its own module:
//! - `margin_loss.safetensors` ([`margin_loss`]): the eight losses of the family, margins to gradients;
//! - `iresnet_tiny.safetensors` ([`iresnet_tiny`]): a tiny iResNet trained three SGD steps;
//! - `verification.safetensors` ([`verification`]): the LFW 10-fold protocol.
//!
//! [`run_cpu`] checks the core (the CPU reference); [`run_gpu`] checks the GPU kernels and trainer against the same
//! files and, where the GPU computes the same values in another order, the same tolerances.
//!
//! The files made for this repository are bundled into the binary; `--reference DIR` checks other files of
//! the same format instead (the iResNet config is read from each file's manifest).

pub mod iresnet_tiny;
pub mod margin_loss;
pub mod verification;

use std::path::Path;

use anyhow::{bail, Result};
use elasticface_core::nn::WinogradTile;

use crate::gpu::kernels::conv2d::ConvPrecision;
use crate::gpu::Gpu;
use crate::reference::Check;
use crate::tensorfile::TensorFile;

/// The reference files, by their file names.
pub const FILES: [&str; 3] = ["margin_loss.safetensors", "iresnet_tiny.safetensors", "verification.safetensors"];

const BUNDLED: [&[u8]; 3] = [
    include_bytes!("../../../tests/data/reference/margin_loss.safetensors"),
    include_bytes!("../../../tests/data/reference/iresnet_tiny.safetensors"),
    include_bytes!("../../../tests/data/reference/verification.safetensors"),
];

/// The checks of one reference file.
#[derive(Clone, Debug)]
pub struct Section {
    /// The file's name.
    pub file: String,
    /// One check per compared tensor.
    pub checks: Vec<Check>,
}

/// Everything a selftest compared.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One section per reference file.
    pub sections: Vec<Section>,
}

impl Report {
    /// True when every check of every section passed (and there was at least one).
    pub fn passed(&self) -> bool {
        let mut any = false;
        for c in self.sections.iter().flat_map(|s| &s.checks) {
            if !c.pass {
                return false;
            }
            any = true;
        }
        any
    }

    /// Number of checks and of failed checks.
    pub fn counts(&self) -> (usize, usize) {
        let all = self.sections.iter().map(|s| s.checks.len()).sum();
        let failed = self.sections.iter().flat_map(|s| &s.checks).filter(|c| !c.pass).count();
        (all, failed)
    }
}

/// Loads the bundled reference files, or those of `dir` (every one of [`FILES`] that exists there; at least one).
pub fn load(dir: Option<&Path>) -> Result<Vec<TensorFile>> {
    let Some(dir) = dir else {
        return FILES.iter().zip(BUNDLED).map(|(name, bytes)| TensorFile::from_bytes(name, bytes)).collect();
    };
    let files: Vec<TensorFile> = FILES
        .iter()
        .map(|name| dir.join(name))
        .filter(|p| p.exists())
        .map(|p| TensorFile::open(&p))
        .collect::<Result<_>>()?;
    if files.is_empty() {
        bail!("{} holds none of the reference files ({})", dir.display(), FILES.join(", "));
    }
    Ok(files)
}

/// The file name of a loaded reference file (its name may carry a directory, with either separator on Windows).
fn base_name(f: &TensorFile) -> &str {
    std::path::Path::new(&f.name).file_name().and_then(|n| n.to_str()).unwrap_or(&f.name)
}

/// Runs every loaded reference file through the CPU reference (the core).
pub fn run_cpu(files: &[TensorFile]) -> Report {
    let sections = files
        .iter()
        .map(|f| {
            let checks = match base_name(f) {
                "margin_loss.safetensors" => margin_loss::check_cpu(f),
                "iresnet_tiny.safetensors" => iresnet_tiny::check_cpu(f),
                "verification.safetensors" => verification::check_cpu(f),
                other => vec![Check::failed(other, "unknown reference file")],
            };
            Section { file: f.name.clone(), checks }
        })
        .collect();
    Report { sections }
}

/// Runs every loaded reference file through the GPU: the margin head's kernels on every loss
/// ([`margin_loss::check_gpu`]) and the GPU trainer on the tiny iResNet ([`iresnet_tiny::check_gpu`]); in f32
/// three times, with the direct convolutions and with every 3x3 stride-1 convolution as Winograd F(2x2, 3x3), then
/// F(4x4, 3x3) (which a GPU runs on its layers of 128 channels and more; the tiny net has none that wide). The
/// verification protocol has no GPU part
/// (it runs on embeddings, on the CPU): its file is checked on the CPU, and its section says so. `precision` is the
/// arithmetic of the trainer's convolutions (the margin head is f32 in both).
pub fn run_gpu(files: &[TensorFile], gpu: &Gpu, precision: ConvPrecision) -> Report {
    let mut sections = Vec::new();
    for f in files {
        match base_name(f) {
            "margin_loss.safetensors" => {
                sections.push(Section { file: f.name.clone(), checks: margin_loss::check_gpu(f, gpu) });
            }
            "iresnet_tiny.safetensors" => {
                let runs = [
                    (None, "direct"),
                    (Some(WinogradTile::F2x2), "Winograd F(2x2, 3x3)"),
                    (Some(WinogradTile::F4x4), "Winograd F(4x4, 3x3)"),
                ];
                for (winograd, what) in runs {
                    let checks = iresnet_tiny::check_gpu(f, gpu, precision, winograd);
                    let what = match (precision, winograd) {
                        (ConvPrecision::F32, None) => String::new(),
                        (ConvPrecision::F32, Some(_)) => format!(" ({what} convolutions)"),
                        // Winograd's transforms run on the f16 activations, F(2x2)'s products on tensor cores.
                        (ConvPrecision::Mixed, _) => format!(" (mixed-precision convolutions, {what})"),
                    };
                    sections.push(Section { file: format!("{}{what}", f.name), checks });
                }
            }
            "verification.safetensors" => sections.push(Section {
                file: format!("{} (CPU: the protocol has no GPU part)", f.name),
                checks: verification::check_cpu(f),
            }),
            other => sections
                .push(Section { file: f.name.clone(), checks: vec![Check::failed(other, "unknown reference file")] }),
        }
    }
    Report { sections }
}
