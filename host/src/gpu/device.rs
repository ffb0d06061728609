//! Adapter choice, device creation and what the chosen adapter can do.

use std::fmt;

use anyhow::{bail, Context, Result};

use super::kernels::conv2d::FragmentSide;

/// How to pick and set up the GPU.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Take the first adapter whose name contains this (case-insensitive), e.g. `llvmpipe` or `H200`.
    pub adapter_name: Option<String>,
    /// Create shader modules with naga's runtime bounds checks (slow: ~15x on GEMM). Tests run checked, so an
    /// out-of-bounds access reads zero instead of corrupting memory and shows up as a wrong result.
    pub checked: bool,
    /// Pretend the largest storage binding is this many bytes (tests of tensor splitting); `None`: the adapter's.
    pub binding_limit: Option<u64>,
    /// Where the adapter has no cooperative matrices, offer mixed precision anyway, with the same f16-rounded
    /// operands multiplied by f32 arithmetic ([`Capabilities::emulated_tensor_cores`]): slower than f32, for
    /// testing the mixed-precision trainer on any adapter (the test suite turns it on).
    pub emulate_tensor_cores: bool,
}

impl GpuOptions {
    /// Options from the environment: `WGPU_ADAPTER_NAME` picks the adapter, `ELASTICFACE_CHECKED=1` turns on
    /// runtime checks, `ELASTICFACE_EMULATE_TENSOR_CORES=1` offers mixed precision without tensor cores.
    /// (`WGPU_BACKEND`, e.g. `vulkan` or `metal`, restricts the backends.)
    pub fn from_env() -> Self {
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        let adapter_name = std::env::var("WGPU_ADAPTER_NAME").ok().filter(|s| !s.is_empty());
        Self {
            adapter_name,
            checked: flag("ELASTICFACE_CHECKED"),
            binding_limit: None,
            emulate_tensor_cores: flag("ELASTICFACE_EMULATE_TENSOR_CORES"),
        }
    }
}

/// What the chosen adapter offers, consulted by the kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `f16` in shaders (`SHADER_F16`).
    pub f16: bool,
    /// Subgroup operations (`SUBGROUP`).
    pub subgroups: bool,
    /// Smallest and largest subgroup size.
    pub subgroup_size: (u32, u32),
    /// GPU timestamps (`TIMESTAMP_QUERY`).
    pub timestamps: bool,
    /// Tensor-core matrices as the mixed-precision convolutions use them (`EXPERIMENTAL_COOPERATIVE_MATRIX` with
    /// f16 inputs and f32 accumulators, f16 in shaders, subgroups of 32 invocations): the side of the fragments
    /// (see `coop_fragments`), or `None`.
    pub cooperative_matrix: Option<FragmentSide>,
    /// Why `cooperative_matrix` is `None`, in words (for `info` and errors).
    pub no_cooperative_matrix: Option<String>,
    /// Mixed precision without cooperative matrices ([`GpuOptions::emulate_tensor_cores`] on an adapter that
    /// lacks them): the same f16-rounded operands, exact products, accumulated by f32 fused multiply-adds.
    pub emulated_tensor_cores: bool,
    /// Largest storage buffer binding, bytes: the adapter's, at most its largest buffer (a binding lies in one;
    /// adapters may report a larger binding limit than buffer limit), possibly lowered by
    /// [`GpuOptions::binding_limit`].
    pub max_binding: u64,
    /// Largest buffer, bytes.
    pub max_buffer: u64,
    /// Workgroup memory, bytes.
    pub max_workgroup_memory: u32,
    /// Invocations per workgroup.
    pub max_invocations: u32,
    /// Workgroups per dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Required alignment of storage binding offsets, bytes.
    pub storage_offset_alignment: u32,
}

/// A device and queue on the chosen adapter, with its capabilities.
pub struct Gpu {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter's name, backend and type.
    pub info: wgpu::AdapterInfo,
    /// What it can do.
    pub caps: Capabilities,
    checked: bool,
}

/// The backends we train on; GL lacks f16 and subgroups.
const BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN.union(wgpu::Backends::METAL).union(wgpu::Backends::DX12);

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends &= BACKENDS;
    wgpu::Instance::new(desc)
}

/// One line per adapter: name, type, backend, driver.
pub struct AdapterLine(pub wgpu::AdapterInfo);

impl fmt::Display for AdapterLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        write!(f, "{} ({:?}, {:?}, driver {} {})", i.name, i.device_type, i.backend, i.driver, i.driver_info)
    }
}

/// Every adapter on the backends we train on.
pub fn adapters() -> Vec<wgpu::AdapterInfo> {
    pollster::block_on(instance().enumerate_adapters(BACKENDS)).iter().map(|a| a.get_info()).collect()
}

/// The order adapters are chosen in, first the lowest: a discrete GPU, then an integrated one, ..., a CPU adapter
/// last; of one GPU seen through several backends (Vulkan and DX12 on Windows), Vulkan first: the backend with
/// cooperative matrices on NVIDIA, and the one whose speed is measured (README: Speed).
fn preference(device_type: wgpu::DeviceType, backend: wgpu::Backend) -> (u8, u8) {
    let device = match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = match backend {
        wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Metal => 1,
        wgpu::Backend::Dx12 => 2,
        _ => 3,
    };
    (device, backend)
}

impl Gpu {
    /// Opens the best adapter (a discrete GPU first, a CPU adapter such as lavapipe last; of one GPU, Vulkan, then
    /// Metal, then DX12), or the one named in `opts`. The error lists what was found and how to get an adapter.
    pub fn new(opts: &GpuOptions) -> Result<Self> {
        let instance = instance();
        let mut all = pollster::block_on(instance.enumerate_adapters(BACKENDS));
        let found: Vec<String> = all.iter().map(|a| format!("  {}", AdapterLine(a.get_info()))).collect();
        if let Some(name) = &opts.adapter_name {
            let needle = name.to_lowercase();
            all.retain(|a| a.get_info().name.to_lowercase().contains(&needle));
        }
        all.sort_by_key(|a| {
            let info = a.get_info();
            preference(info.device_type, info.backend)
        });
        let Some(adapter) = all.into_iter().next() else {
            let wanted = opts.adapter_name.as_ref().map(|n| format!(" named like `{n}`")).unwrap_or_default();
            let list = if found.is_empty() { "  (none)".to_string() } else { found.join("\n") };
            bail!(
                "no Vulkan, Metal or DX12 adapter{wanted} found. Adapters seen:\n{list}\n\
                 Without a GPU, install a CPU Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers \
                 libvulkan1`); `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` restrict the choice."
            );
        };
        Self::open(adapter, opts)
    }

    fn open(adapter: wgpu::Adapter, opts: &GpuOptions) -> Result<Self> {
        let info = adapter.get_info();
        let available = adapter.features();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let coop = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        let needed = [
            (coop, "cooperative matrices"),
            (wgpu::Features::SHADER_F16, "f16"),
            (wgpu::Features::SUBGROUP, "subgroups"),
        ];
        let fragments = coop_fragments(
            &adapter.cooperative_matrix_properties(),
            info.backend,
            (info.subgroup_min_size, info.subgroup_max_size),
        )
        .and_then(|side| {
            let missing: Vec<&str> = needed.iter().filter(|(f, _)| !available.contains(*f)).map(|(_, n)| *n).collect();
            match missing.is_empty() {
                true => Ok(side),
                false => Err(format!("the adapter does not offer {} in shaders", missing.join(", "))),
            }
        });
        let use_coop = fragments.is_ok();
        let features = (available & wanted) | if use_coop { coop } else { wgpu::Features::empty() };
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("elasticface"),
            required_features: features,
            required_limits: limits.clone(),
            // SAFETY: the one experimental feature asked for is the cooperative matrix, used only by the
            // mixed-precision convolution module, which is compiled only when `coop_fragments` found a configuration
            // it uses (16x16x16 or 8x8x8, f16 inputs, f32 accumulators, subgroups of 32); its results are checked
            // against the core's convolution of f16-rounded operands by the test suite where such an adapter is
            // present.
            experimental_features: if use_coop {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            ..Default::default()
        }))
        .with_context(|| format!("cannot open a device on {}", AdapterLine(info.clone())))?;
        let max_binding = limits.max_storage_buffer_binding_size;
        let caps = Capabilities {
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_size: (info.subgroup_min_size, info.subgroup_max_size),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            cooperative_matrix: fragments.as_ref().ok().copied(),
            no_cooperative_matrix: fragments.err(),
            emulated_tensor_cores: opts.emulate_tensor_cores && !use_coop,
            max_binding: opts.binding_limit.map_or(max_binding, |l| l.min(max_binding)).min(limits.max_buffer_size),
            max_buffer: limits.max_buffer_size,
            max_workgroup_memory: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
        };
        Ok(Self { device, queue, info, caps, checked: opts.checked })
    }

    /// Whether shader modules are created with runtime bounds checks.
    pub fn checked(&self) -> bool {
        self.checked
    }

    /// Compiles a WGSL module: without runtime bounds checks for speed, unless the device is `checked`.
    pub fn shader(&self, label: &str, source: &str) -> wgpu::ShaderModule {
        let desc = wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(source.into()) };
        if self.checked {
            self.device.create_shader_module(desc)
        } else {
            // SAFETY: every kernel computes its indices from the shape it is dispatched with, and the host checks
            // the buffer sizes against that shape before recording a dispatch (`Dispatch` builders); the test
            // suite runs every kernel with runtime checks on (`checked`) to catch violations.
            unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        }
    }

    /// Runs `f` (e.g. compiling modules and pipelines, allocating buffers) and returns the first validation,
    /// internal or out-of-memory error the device reported meanwhile (a driver that rejects a shader, a card too
    /// small for the buffers) as an error naming `what`, instead of leaving it to the device's uncaptured-error
    /// handler, which panics.
    pub fn capture_errors<T>(&self, what: &str, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(internal.pop()),
            pollster::block_on(memory.pop()),
        ];
        match errors.into_iter().flatten().next() {
            Some(e @ wgpu::Error::OutOfMemory { .. }) => {
                Err(anyhow::anyhow!("{what}: the GPU ran out of memory ({e}); a smaller batch needs less"))
            }
            Some(e) => Err(anyhow::anyhow!("{what}: {e}{}", backend_hint(self.info.backend))),
            None => Ok(value),
        }
    }

    /// A compute pipeline for `entry` of `module`, its bind group layout derived from the shader.
    pub fn pipeline(&self, label: &str, module: &wgpu::ShaderModule, entry: &str) -> wgpu::ComputePipeline {
        self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    }

    /// Waits until the GPU has finished all submitted work.
    pub fn wait(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).context("waiting for the GPU")?;
        Ok(())
    }
}

/// What to add to an error of a backend the kernels have not yet run on (README: GPUs and platforms).
fn backend_hint(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Dx12 => {
            "\n(the kernels have not yet run on DX12: `WGPU_BACKEND=vulkan` takes the GPU's Vulkan driver instead; \
             without dxcompiler.dll, DX12 compiles them with the older FXC)"
        }
        wgpu::Backend::Metal => "\n(the kernels have not yet run on Metal on Apple hardware)",
        _ => "",
    }
}

/// The cooperative-matrix fragments the mixed-precision convolutions can run on, from the adapter's configurations
/// (`props`), backend and subgroup sizes: 16x16x16 with f16 inputs and f32 accumulators where subgroups are
/// exactly 32 wide (NVIDIA's tensor cores on Vulkan); else 8x8x8 of the same types on Metal (Apple's simdgroup
/// matrices: wgpu offers them only on the Apple GPUs that have them, whose simdgroups are 32 wide, and reports
/// Metal's subgroup sizes as 4..64 without asking the GPU); else why not, in words.
pub fn coop_fragments(
    props: &[wgpu::CooperativeMatrixProperties],
    backend: wgpu::Backend,
    (min_subgroup, max_subgroup): (u32, u32),
) -> Result<FragmentSide, String> {
    let offers = |n: u32| {
        props.iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (n, n, n)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
    };
    if offers(16) && (min_subgroup, max_subgroup) == (32, 32) {
        Ok(FragmentSide::Sixteen)
    } else if offers(8) && backend == wgpu::Backend::Metal {
        Ok(FragmentSide::Eight)
    } else if offers(16) {
        Err(format!(
            "its 16x16x16 f16 -> f32 matrices run on subgroups of {min_subgroup}..{max_subgroup} invocations; the \
             fragments' layout needs exactly 32"
        ))
    } else if props.is_empty() {
        Err(match backend {
            wgpu::Backend::Dx12 => "wgpu has none on DX12".to_string(),
            _ => "the adapter offers none".to_string(),
        })
    } else {
        let offered: Vec<String> = props
            .iter()
            .map(|p| format!("{}x{}x{} {:?} -> {:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
            .collect();
        let wanted = if backend == wgpu::Backend::Metal { "16x16x16 or 8x8x8" } else { "16x16x16" };
        Err(format!("none {wanted} with f16 inputs and f32 accumulators among those offered: {}", offered.join(", ")))
    }
}

impl Capabilities {
    /// Whether the convolutions can run in mixed precision: on cooperative matrices, or emulated, with f16 in
    /// shaders for the activations.
    pub fn mixed_precision(&self) -> bool {
        (self.cooperative_matrix.is_some() || self.emulated_tensor_cores) && self.f16
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "  f16:                  {}", yes(self.f16))?;
        writeln!(
            f,
            "  subgroups:            {} (size {}..{})",
            yes(self.subgroups),
            self.subgroup_size.0,
            self.subgroup_size.1
        )?;
        writeln!(f, "  timestamps:           {}", yes(self.timestamps))?;
        match self.cooperative_matrix {
            Some(side) => writeln!(f, "  cooperative matrix:   yes ({side} f16 -> f32)")?,
            None => match &self.no_cooperative_matrix {
                Some(why) => writeln!(f, "  cooperative matrix:   no ({why})")?,
                None => writeln!(f, "  cooperative matrix:   no")?,
            },
        }
        if self.emulated_tensor_cores {
            writeln!(f, "  mixed precision:      emulated (f16 operands, f32 arithmetic)")?;
        }
        writeln!(f, "  max storage binding:  {} MiB", self.max_binding >> 20)?;
        writeln!(f, "  max buffer:           {} MiB", self.max_buffer >> 20)?;
        writeln!(f, "  workgroup memory:     {} KiB", self.max_workgroup_memory >> 10)?;
        write!(f, "  invocations/group:    {}", self.max_invocations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_on_dx12_points_to_vulkan() {
        assert!(backend_hint(wgpu::Backend::Dx12).contains("WGPU_BACKEND=vulkan"));
        assert_eq!(backend_hint(wgpu::Backend::Vulkan), "");
    }

    #[test]
    fn a_discrete_gpu_comes_first_and_of_one_gpu_its_vulkan_adapter() {
        use wgpu::Backend::{Dx12, Metal, Vulkan};
        use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu};
        let mut seen = [(Cpu, Vulkan), (IntegratedGpu, Dx12), (DiscreteGpu, Dx12), (IntegratedGpu, Vulkan)];
        seen.sort_by_key(|&(device, backend)| preference(device, backend));
        assert_eq!(seen, [(DiscreteGpu, Dx12), (IntegratedGpu, Vulkan), (IntegratedGpu, Dx12), (Cpu, Vulkan)]);
        assert!(preference(DiscreteGpu, Metal) < preference(DiscreteGpu, Dx12));
    }

    fn config(
        n: u32,
        ab: wgpu::CooperativeScalarType,
        cr: wgpu::CooperativeScalarType,
    ) -> wgpu::CooperativeMatrixProperties {
        wgpu::CooperativeMatrixProperties {
            m_size: n,
            n_size: n,
            k_size: n,
            ab_type: ab,
            cr_type: cr,
            saturating_accumulation: false,
        }
    }

    #[test]
    fn fragments_are_16_on_32_wide_subgroups_and_8_on_metal() {
        use wgpu::Backend::{Metal, Vulkan};
        use wgpu::CooperativeScalarType::{F16, F32};
        // An H200 on Vulkan: 16x16x16 (and others); subgroups of 32.
        let nvidia = [config(16, F16, F16), config(16, F16, F32), config(8, F16, F32)];
        assert_eq!(coop_fragments(&nvidia, Vulkan, (32, 32)), Ok(FragmentSide::Sixteen));
        // Subgroups that may be 64 wide (the layout assumes 32): none, and why.
        let why = coop_fragments(&nvidia, Vulkan, (32, 64)).unwrap_err();
        assert!(why.contains("subgroups of 32..64 invocations"), "{why}");
        // What wgpu offers on Apple GPUs: 8x8x8 in f32, f16, and f16 with f32 accumulators.
        let apple = [config(8, F32, F32), config(8, F16, F16), config(8, F16, F32)];
        assert_eq!(coop_fragments(&apple, Metal, (4, 64)), Ok(FragmentSide::Eight));
        // 8x8x8 elsewhere, f16 accumulators only, or nothing: none.
        let why = coop_fragments(&apple, Vulkan, (32, 32)).unwrap_err();
        assert!(why.contains("none 16x16x16 with f16 inputs") && why.contains("8x8x8 F16 -> F32"), "{why}");
        assert!(coop_fragments(&[config(8, F16, F16)], Metal, (4, 64)).unwrap_err().contains("16x16x16 or 8x8x8"));
        assert!(coop_fragments(&[config(16, F16, F16)], Vulkan, (32, 32)).is_err());
        assert_eq!(coop_fragments(&[], Vulkan, (32, 32)).unwrap_err(), "the adapter offers none");
        assert_eq!(coop_fragments(&[], wgpu::Backend::Dx12, (32, 32)).unwrap_err(), "wgpu has none on DX12");
    }
}
