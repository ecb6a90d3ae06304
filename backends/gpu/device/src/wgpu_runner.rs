//! Runs a module's WGSL kernels through wgpu (Vulkan). One adapter and
//! device per process, opened on first use and shared by every module;
//! each loaded module owns its arena buffer, its weights buffer (uploaded
//! once, at load) and one compute pipeline per kernel. A run writes the
//! inputs into the arena, launches every kernel in one compute pass (the
//! passes' usage scopes order each dispatch's writes before the next one's
//! reads) and reads the outputs back.

use std::sync::{mpsc, Mutex, OnceLock};

use wgpu::util::DeviceExt;

use crate::{align4, GpuError, Manifest, Space, BINDING_BYTES};

/// The process's GPU: device and queue. Every kernel binds the arena at
/// binding 0 (read-write) and the weights, in buffers of at most
/// [`BINDING_BYTES`], at bindings 1, 2, … (read-only).
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// `name (backend, device type)` of the adapter, for messages.
    pub adapter: String,
    /// The largest storage binding the device takes.
    pub max_binding: u64,
    /// The most storage buffers one shader may bind.
    max_buffers: u32,
}

static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();

/// The process's GPU, opened on first call: the first Vulkan adapter
/// wgpu finds (a hardware one is preferred; Mesa's lavapipe otherwise),
/// with its own limits. `Err` says why there is none.
pub fn gpu() -> Result<&'static Gpu, GpuError> {
    GPU.get_or_init(open)
        .as_ref()
        .map_err(|e| GpuError::NoDevice(e.clone()))
}

fn open() -> Result<Gpu, String> {
    // Mesa's implicit device-select Vulkan layer prints an `error:` line
    // on stderr whenever XDG_RUNTIME_DIR is unset (containers, CI) and
    // then carries on; m4c promises one error line per failure, so the
    // layer is switched off there. The variable is read by the Vulkan
    // loader only, once, when the instance below is created.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        apply_limit_buckets: false,
    }))
    .map_err(|e| {
        format!("no Vulkan adapter ({e}); install a Vulkan driver, e.g. mesa-vulkan-drivers")
    })?;
    let info = adapter.get_info();
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("m4c"),
        required_limits: limits.clone(),
        ..Default::default()
    }))
    .map_err(|e| format!("adapter `{}`: no device: {e}", info.name))?;
    Ok(Gpu {
        device,
        queue,
        adapter: format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type),
        max_binding: limits.max_storage_buffer_binding_size,
        max_buffers: limits.max_storage_buffers_per_shader_stage,
    })
}

/// The bind group layout of a module with `chunks` weights buffers and
/// its pipeline layout.
fn layouts(gpu: &Gpu, chunks: u32) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    let entry = |binding, read_only| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let entries: Vec<_> = std::iter::once(entry(0, false))
        .chain((1..=chunks).map(|b| entry(b, true)))
        .collect();
    let layout = gpu
        .device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("m4c arena+weights"),
            entries: &entries,
        });
    let pipeline = gpu
        .device
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("m4c"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
    (layout, pipeline)
}

/// The weights buffers of `weights_bytes`: one per [`BINDING_BYTES`]
/// (at least one).
fn chunks(weights_bytes: u64) -> u32 {
    weights_bytes.div_ceil(BINDING_BYTES).max(1) as u32
}

/// Runs `f` inside a validation and an out-of-memory error scope; the
/// first error either catches becomes `Err`.
fn scoped<T>(gpu: &Gpu, what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = f();
    let errors = [
        pollster::block_on(validation.pop()),
        pollster::block_on(oom.pop()),
    ];
    match errors.into_iter().flatten().next() {
        Some(e) => Err(format!("{what}: {e}")),
        None => Ok(out),
    }
}

/// One loaded module: its buffers and pipelines; runs are serialised.
pub struct WgpuModule {
    manifest: Manifest,
    pipelines: Vec<(wgpu::ComputePipeline, [u32; 3])>,
    state: Mutex<Buffers>,
    /// Outputs that are constants: their bytes, read from the weights at
    /// load (`None` for outputs in the arena).
    constant_outputs: Vec<Option<Vec<u8>>>,
}

struct Buffers {
    arena: wgpu::Buffer,
    readback: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    // Held for the bind group's lifetime.
    _weights: Vec<wgpu::Buffer>,
}

impl WgpuModule {
    /// Compiles `wgsl` (every entry point of the manifest's kernels),
    /// creates the arena and uploads `weights` once. `manifest` must have
    /// passed [`Manifest::check`].
    pub fn load(manifest: Manifest, wgsl: &str, weights: &[u8]) -> Result<WgpuModule, GpuError> {
        let gpu = gpu()?;
        let chunks = chunks(manifest.weights_bytes);
        let largest = manifest.weights_bytes.min(BINDING_BYTES);
        for (what, bytes) in [("arena", manifest.arena_bytes), ("weights", largest)] {
            if bytes > gpu.max_binding {
                return Err(GpuError::Plan(format!(
                    "the {what} needs {bytes} bytes in one binding; {} binds at most {}",
                    gpu.adapter, gpu.max_binding
                )));
            }
        }
        if chunks + 1 > gpu.max_buffers {
            return Err(GpuError::Plan(format!(
                "{} storage buffers (the arena and {chunks} of weights); {} binds at most {}",
                chunks + 1,
                gpu.adapter,
                gpu.max_buffers
            )));
        }
        let (layout, pipeline_layout) = layouts(gpu, chunks);
        let module = scoped(gpu, "shader", || {
            gpu.device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("m4c kernels"),
                    source: wgpu::ShaderSource::Wgsl(wgsl.into()),
                })
        })
        .map_err(GpuError::Shader)?;
        let pipelines = manifest
            .kernels
            .iter()
            .map(|k| {
                let pipeline = scoped(gpu, &format!("kernel `{}`", k.entry), || {
                    gpu.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(&k.entry),
                            layout: Some(&pipeline_layout),
                            module: &module,
                            entry_point: Some(&k.entry),
                            compilation_options: Default::default(),
                            cache: None,
                        })
                })
                .map_err(GpuError::Shader)?;
                Ok((pipeline, k.workgroups))
            })
            .collect::<Result<Vec<_>, GpuError>>()?;
        let constant_outputs = manifest
            .outputs
            .iter()
            .map(|b| {
                (b.space == Space::Weights)
                    .then(|| weights[b.offset as usize..(b.offset + b.bytes) as usize].to_vec())
            })
            .collect();
        let state = scoped(gpu, "buffers", || buffers(gpu, &layout, &manifest, weights))
            .map_err(GpuError::Run)?;
        Ok(WgpuModule {
            manifest,
            pipelines,
            state: Mutex::new(state),
            constant_outputs,
        })
    }

    /// The adapter the module runs on.
    pub fn adapter(&self) -> &'static str {
        gpu().map_or("", |g| g.adapter.as_str())
    }

    /// Launches every kernel `repeats` times on what the arena holds, with
    /// no transfers, and gives the wall time until the GPU is done: the
    /// kernels' own time, for benchmarks.
    pub fn time_kernels(&self, repeats: usize) -> Result<std::time::Duration, GpuError> {
        let gpu = gpu()?;
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        for _ in 0..repeats {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_bind_group(0, &state.bind_group, &[]);
            for (pipeline, [x, y, z]) in &self.pipelines {
                pass.set_pipeline(pipeline);
                pass.dispatch_workgroups(*x, *y, *z);
            }
        }
        let started = std::time::Instant::now();
        gpu.queue.submit([encoder.finish()]);
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Run(e.to_string()))?;
        Ok(started.elapsed())
    }

    /// Runs every kernel once on `inputs` (raw bytes, signature order,
    /// sizes as checked) and gives each output's bytes.
    pub fn run(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, GpuError> {
        let gpu = gpu()?;
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (binding, bytes) in self.manifest.inputs.iter().zip(inputs) {
            if bytes.len() as u64 != binding.bytes {
                return Err(GpuError::Run(format!(
                    "an input of {} bytes where {} are planned",
                    bytes.len(),
                    binding.bytes
                )));
            }
            let mut padded = bytes.to_vec();
            padded.resize(align4(binding.bytes) as usize, 0);
            if !padded.is_empty() {
                gpu.queue
                    .write_buffer(&state.arena, binding.offset, &padded);
            }
        }
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_bind_group(0, &state.bind_group, &[]);
            for (pipeline, [x, y, z]) in &self.pipelines {
                pass.set_pipeline(pipeline);
                pass.dispatch_workgroups(*x, *y, *z);
            }
        }
        let mut at = 0;
        let mut spans = Vec::new();
        for b in &self.manifest.outputs {
            let size = align4(b.bytes);
            if b.space == Space::Arena && size > 0 {
                encoder.copy_buffer_to_buffer(&state.arena, b.offset, &state.readback, at, size);
            }
            spans.push(at);
            at += size;
        }
        gpu.queue.submit([encoder.finish()]);
        let slice = state.readback.slice(..);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Run(e.to_string()))?;
        rx.recv()
            .map_err(|e| GpuError::Run(e.to_string()))?
            .map_err(|e| GpuError::Run(format!("reading the outputs back: {e}")))?;
        let outputs = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError::Run(e.to_string()))?;
            self.manifest
                .outputs
                .iter()
                .zip(&spans)
                .zip(&self.constant_outputs)
                .map(|((b, &at), constant)| match constant {
                    Some(bytes) => bytes.clone(),
                    None => view[at as usize..(at + b.bytes) as usize].to_vec(),
                })
                .collect()
        };
        state.readback.unmap();
        Ok(outputs)
    }
}

/// The arena, the weights (uploaded now, one buffer per binding), the
/// readback buffer for the outputs and the bind group of the first two.
fn buffers(
    gpu: &Gpu,
    layout: &wgpu::BindGroupLayout,
    manifest: &Manifest,
    weights: &[u8],
) -> Buffers {
    let storage = wgpu::BufferUsages::STORAGE;
    let arena = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("m4c arena"),
        size: align4(manifest.arena_bytes).max(4),
        usage: storage | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let weights: Vec<wgpu::Buffer> = (0..chunks(weights.len() as u64) as usize)
        .map(|k| {
            let from = (k * BINDING_BYTES as usize).min(weights.len());
            let to = (from + BINDING_BYTES as usize).min(weights.len());
            let mut padded = weights[from..to].to_vec();
            padded.resize((align4(padded.len() as u64) as usize).max(4), 0);
            gpu.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("m4c weights"),
                    contents: &padded,
                    usage: storage,
                })
        })
        .collect();
    let readback_bytes: u64 = manifest.outputs.iter().map(|b| align4(b.bytes)).sum();
    let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("m4c outputs"),
        size: readback_bytes.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let entries: Vec<_> = std::iter::once(&arena)
        .chain(&weights)
        .enumerate()
        .map(|(b, buffer)| wgpu::BindGroupEntry {
            binding: b as u32,
            resource: buffer.as_entire_binding(),
        })
        .collect();
    let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("m4c"),
        layout,
        entries: &entries,
    });
    Buffers {
        arena,
        readback,
        bind_group,
        _weights: weights,
    }
}
