//! Every shader module the host can compile, translated by naga for each backend wgpu may run it on: SPIR-V
//! (Vulkan), MSL (Metal) and HLSL (DX12). The GPU tests run the SPIR-V on lavapipe; Metal and DX12 are not at hand
//! where the tests run, so this is what checks, on any machine, that no module uses what their translators (or the
//! oldest shader language versions wgpu targets there) lack. What it cannot check: the platforms' own compilers
//! (Apple's Metal compiler, DXC/FXC) on the translated text, and the kernels' results there.
//!
//! The modules: every shader of `shaders/` but the convolution, in every combination of f32 and f16 storage
//! aliases ([`StorageVariants`](super::StorageVariants)); the convolution composed in every tile shape, in f32, in
//! mixed precision on f16-rounded operands (no tensor cores), on cooperative matrices, and with the fragments as
//! loops (`conv2d::module_source`). Each module goes to the backends the host can build it for, at the oldest
//! language version on which wgpu offers what it needs (wgpu-hal 30's adapter code):
//! - Vulkan: every module; cooperative matrices with 16x16x16 fragments (the side `coop_fragments` picks there).
//! - Metal: MSL 1.0 (wgpu's floor), except cooperative matrices: 8x8x8 fragments at MSL 2.3, the first version on
//!   which wgpu offers them.
//! - DX12: shader model 5.1 (FXC, wgpu's compiler where no `dxcompiler.dll` is found) for f32 modules, 6.2 (DXC)
//!   for those with f16, the first model on which wgpu offers f16; wgpu has no cooperative matrices on DX12.
//!
//! Each translation runs with naga's bounds checks off (as the host compiles its modules, `Gpu::shader`) and with
//! its default checks (a `checked` device). A second test holds every kernel but the convolution (whose tiles follow
//! the adapter's limits) to the workgroup limits of every backend: 32 KiB of workgroup memory, 256 invocations.

use naga::back::{hlsl, msl, spv};
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};

use super::conv2d::compose::{FragmentSide, Fragments, TileShape};
use super::conv2d::{module_source, ConvPrecision};
use super::shader_files::{shader_files, workgroup_bytes};
use super::storage_source;
use crate::gpu::Elem;

/// A module as the host composes it: its label and WGSL text.
struct Module {
    label: String,
    source: String,
    /// The fragments it multiplies on cooperative matrices, if it does.
    cooperative: Option<FragmentSide>,
}

impl Module {
    fn f16(&self) -> bool {
        self.source.contains("enable f16;")
    }
}

/// The shaders of `shaders/` but the convolution, with their storage aliases (`alias NAME = f32;`) in every
/// combination of f32 and f16.
fn storage_modules() -> Vec<Module> {
    let mut modules = Vec::new();
    for path in shader_files() {
        let file = path.file_name().expect("a file").to_string_lossy().into_owned();
        if file == "conv2d.wgsl" {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("shader is UTF-8");
        let aliases: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("alias ")?.strip_suffix(" = f32;"))
            .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        for combination in 0..1usize << aliases.len() {
            let elems: Vec<(&str, Elem)> = aliases
                .iter()
                .enumerate()
                .map(|(i, name)| (*name, if combination >> i & 1 == 1 { Elem::F16 } else { Elem::F32 }))
                .collect();
            let names: Vec<String> = elems.iter().map(|(name, elem)| format!("{name} {elem}")).collect();
            modules.push(Module {
                label: format!("{file} ({})", names.join(", ")),
                source: storage_source(&file, &source, &elems).expect("the aliases were read from the file"),
                cooperative: None,
            });
        }
    }
    modules
}

/// The convolution in every composition the host can build.
fn convolution_modules() -> Vec<Module> {
    let mut variants = vec![(ConvPrecision::F32, None), (ConvPrecision::Mixed, None)];
    for side in FragmentSide::ALL {
        variants.push((ConvPrecision::Mixed, Some((Fragments::Cooperative, side))));
        variants.push((ConvPrecision::Mixed, Some((Fragments::Loops, side))));
    }
    let mut modules = Vec::new();
    for shape in TileShape::ALL {
        for &(precision, fragments) in &variants {
            let (label, source) = module_source(precision, fragments, shape);
            let cooperative = match fragments {
                Some((Fragments::Cooperative, side)) => Some(side),
                _ => None,
            };
            modules.push(Module { source: source.unwrap_or_else(|e| panic!("{label}: {e}")), label, cooperative });
        }
    }
    modules
}

/// The backends a module is translated for.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Vulkan,
    Metal,
    Dx12,
}

impl Backend {
    /// Whether the host can build `m` for this backend (see the module documentation).
    fn builds(self, m: &Module) -> bool {
        match (self, m.cooperative) {
            (_, None) => true,
            (Backend::Vulkan, Some(side)) => side == FragmentSide::Sixteen,
            (Backend::Metal, Some(side)) => side == FragmentSide::Eight,
            (Backend::Dx12, Some(_)) => false,
        }
    }

    /// What naga's translator for this backend supports.
    fn capabilities(self) -> Capabilities {
        match self {
            Backend::Vulkan => spv::supported_capabilities(),
            Backend::Metal => msl::supported_capabilities(),
            Backend::Dx12 => hlsl::supported_capabilities(),
        }
    }

    /// `m` (validated as `info`) in this backend's shading language, with bounds checks off and with naga's
    /// default ones; what goes wrong, as text.
    fn translate(self, m: &Module, module: &naga::Module, info: &ModuleInfo) -> Vec<String> {
        let unchecked = BoundsCheckPolicies {
            index: BoundsCheckPolicy::Unchecked,
            buffer: BoundsCheckPolicy::Unchecked,
            image_load: BoundsCheckPolicy::Unchecked,
            binding_array: BoundsCheckPolicy::Unchecked,
        };
        let checks = [(unchecked, "bounds checks off"), (BoundsCheckPolicies::default(), "bounds checks on")];
        let results: Vec<(String, Result<(), String>)> = match self {
            Backend::Vulkan => checks
                .map(|(checks, how)| {
                    let options = spv::Options { bounds_check_policies: checks, ..Default::default() };
                    let result = spv::write_vec(module, info, &options, None).map(drop);
                    (how.to_string(), result.map_err(|e| format!("{e:?}")))
                })
                .into(),
            Backend::Metal => {
                let lang_version = if m.cooperative.is_some() { (2, 3) } else { (1, 0) };
                checks
                    .map(|(checks, how)| {
                        let options =
                            msl::Options { lang_version, bounds_check_policies: checks, ..Default::default() };
                        let result = msl::write_string(module, info, &options, &msl::PipelineOptions::default());
                        let how = format!("MSL {}.{}, {how}", lang_version.0, lang_version.1);
                        (how, result.map(drop).map_err(|e| format!("{e:?}")))
                    })
                    .into()
            }
            Backend::Dx12 => {
                // naga's HLSL writer takes no bounds-check policies.
                let shader_model = if m.f16() { hlsl::ShaderModel::V6_2 } else { hlsl::ShaderModel::V5_1 };
                let options = hlsl::Options { shader_model, ..Default::default() };
                let pipeline = hlsl::PipelineOptions::default();
                let mut text = String::new();
                let result = hlsl::Writer::new(&mut text, &options, &pipeline).write(module, info, None);
                vec![(format!("{shader_model:?}"), result.map(drop).map_err(|e| format!("{e:?}")))]
            }
        };
        results
            .into_iter()
            .filter_map(|(how, result)| Some(format!("{} on {self:?} ({how}): {}", m.label, result.err()?)))
            .collect()
    }
}

/// What goes wrong translating `m` for each backend that builds it, empty if nothing does.
fn translate_everywhere(m: &Module) -> Vec<String> {
    let module = match naga::front::wgsl::parse_str(&m.source) {
        Ok(module) => module,
        Err(e) => return vec![format!("{}: {}", m.label, e.emit_to_string(&m.source))],
    };
    let mut failures = Vec::new();
    for backend in [Backend::Vulkan, Backend::Metal, Backend::Dx12].into_iter().filter(|b| b.builds(m)) {
        match Validator::new(ValidationFlags::all(), backend.capabilities()).validate(&module) {
            Ok(info) => failures.extend(backend.translate(m, &module, &info)),
            Err(e) => failures.push(format!("{} on {backend:?}: {}", m.label, e.emit_to_string(&m.source))),
        }
    }
    failures
}

/// The most workgroup memory a kernel other than the convolution's may declare: what every DX12 device and every
/// Mac's GPU offers (32 KiB), and no desktop Vulkan driver offers less of. The convolution's tiles are chosen by
/// the adapter's own limit (`ConvTiling::for_adapter`).
const PORTABLE_WORKGROUP_BYTES: u32 = 32 * 1024;

/// The most invocations a workgroup may have on any adapter wgpu opens with its default limits.
const PORTABLE_INVOCATIONS: u32 = 256;

/// Workgroup bytes `m` declares, and the largest workgroup of its entry points, in invocations.
fn workgroup_needs(m: &Module) -> (u32, u32) {
    let module = naga::front::wgsl::parse_str(&m.source).unwrap_or_else(|e| panic!("{}: {e}", m.label));
    let bytes = workgroup_bytes(&module).unwrap_or_else(|e| panic!("{}: {e}", m.label));
    let invocations = module.entry_points.iter().map(|e| e.workgroup_size.iter().product()).max().unwrap_or(0);
    (bytes, invocations)
}

#[test]
fn the_kernels_but_the_convolution_fit_every_backends_workgroup_limits() {
    let mut largest = (0, String::new());
    for m in storage_modules() {
        let (bytes, invocations) = workgroup_needs(&m);
        assert!(bytes <= PORTABLE_WORKGROUP_BYTES, "{}: {bytes} bytes of workgroup memory", m.label);
        assert!((1..=PORTABLE_INVOCATIONS).contains(&invocations), "{}: {invocations} invocations", m.label);
        largest = largest.max((bytes, m.label));
    }
    // The margin head's tiles of the cosines and logits (f32: 2 x 1040 + 4160, and 256 partial sums).
    assert_eq!(largest, ((1040 + 1040 + 4160 + 256) * 4, "margin_loss.wgsl ()".to_string()));
}

#[test]
fn every_shader_module_translates_for_vulkan_metal_and_dx12() {
    let (storage, convolution) = (storage_modules(), convolution_modules());
    // A module the enumeration missed would go untested: the 10 shader files but the convolution (16 storage
    // combinations of the batch norms, 4 of Winograd's, 2 of the input pipeline's), and the convolution's 6
    // compositions in every tile shape.
    assert_eq!(storage.len(), 16 + 4 + 2 + 7, "{:?}", storage.iter().map(|m| &m.label).collect::<Vec<_>>());
    assert_eq!(convolution.len(), 6 * TileShape::ALL.len());
    let modules: Vec<Module> = storage.into_iter().chain(convolution).collect();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = modules
            .chunks(modules.len().div_ceil(4))
            .map(|chunk| scope.spawn(move || chunk.iter().flat_map(translate_everywhere).collect::<Vec<_>>()))
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a translation panicked")).collect()
    });
    assert!(failures.is_empty(), "{} translations failed:\n{}", failures.len(), failures.join("\n"));
}
