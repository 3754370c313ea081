//! The GPU runtime: one wgpu device per worker (Vulkan; lavapipe where there is no GPU),
//! pipelines compiled once and cached by kernel name, and buffer upload/readback helpers.

pub mod gemm;
pub mod kernels;
pub mod neighbors;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no Vulkan adapter: {0}")]
    NoAdapter(String),
    #[error("device request failed: {0}")]
    Device(String),
    #[error("GPU readback failed: {0}")]
    Readback(String),
}

/// A device, its queue and the compiled pipelines. Cheap to share (`Arc<Gpu>`); every method
/// blocks, so async callers run them on a blocking thread.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pipelines: Mutex<HashMap<&'static str, Arc<wgpu::ComputePipeline>>>,
    /// A lower ceiling on one binding than the device's own, when set.
    binding_cap: u64,
}

impl Gpu {
    /// Opens the first Vulkan adapter, asking for its own buffer limits rather than wgpu's
    /// small defaults.
    pub fn new() -> Result<Self, GpuError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = wgpu::Backends::VULKAN;
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        let supported = adapter.limits();
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: supported.max_storage_buffer_binding_size,
            max_buffer_size: supported.max_buffer_size,
            max_compute_workgroups_per_dimension: supported.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: supported.max_storage_buffers_per_shader_stage,
            ..wgpu::Limits::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("gpuq"),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device(e.to_string()))?;
        Ok(Self {
            device,
            queue,
            info: adapter.get_info(),
            pipelines: Mutex::new(HashMap::new()),
            binding_cap: u64::MAX,
        })
    }

    /// Largest buffer one binding can see, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.device
            .limits()
            .max_storage_buffer_binding_size
            .min(self.device.limits().max_buffer_size)
            .min(self.binding_cap)
    }

    /// Treats `bytes` as the largest binding, below the device's own limit: bounds the memory
    /// one job can take, and lets tests reach the chunking and refusal paths with small inputs.
    pub fn cap_bindings(&mut self, bytes: u64) {
        self.binding_cap = bytes;
    }

    /// The pipeline for `entry` in `source`, compiled on first use and cached under `name`.
    pub fn pipeline(
        &self,
        name: &'static str,
        source: &str,
        entry: &str,
    ) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().expect("pipeline cache poisoned");
        cache
            .entry(name)
            .or_insert_with(|| {
                let module = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(name),
                        source: wgpu::ShaderSource::Wgsl(source.into()),
                    });
                Arc::new(
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(name),
                            layout: None,
                            module: &module,
                            entry_point: Some(entry),
                            compilation_options: Default::default(),
                            cache: None,
                        }),
                )
            })
            .clone()
    }

    /// A storage buffer holding `data` (readable back and overwritable).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        // wgpu refuses zero-sized bindings; keep one element of room.
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let padded;
        let contents = if bytes.is_empty() {
            padded = [0u8; 4];
            &padded[..]
        } else {
            bytes
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A zeroed storage buffer of `len` f32s.
    pub fn zeros(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub fn uniform<T: bytemuck::Pod>(&self, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    pub fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let numbered: Vec<_> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u32, *b))
            .collect();
        self.bind_group_at(pipeline, &numbered)
    }

    /// A bind group with each buffer at the binding number beside it (for entry points that
    /// use only some of their module's bindings).
    pub fn bind_group_at(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let entries: Vec<_> = buffers
            .iter()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: *i,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Copies the first `len` f32s of `buffer` back to the host, waiting for queued work.
    pub fn read(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        self.read_as(buffer, len)
    }

    /// [`Gpu::read`] for a buffer of u32s.
    pub fn read_u32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<u32>, GpuError> {
        self.read_as(buffer, len)
    }

    fn read_as<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<T>, GpuError> {
        let size = (len.max(1) * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        rx.recv()
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let out: Vec<T> = bytemuck::cast_slice(&view)[..len].to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Blocks until the device has finished all submitted work.
    pub fn wait(&self) {
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
    }

    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&Default::default())
    }

    pub fn submit(&self, encoder: wgpu::CommandEncoder) {
        self.queue.submit([encoder.finish()]);
    }
}

/// Workgroup counts for `n` invocations of `per_group` each, folded into two dimensions when
/// `n` is past the per-dimension limit (the kernels rebuild the index from both).
pub fn groups_1d(n: usize, per_group: usize) -> (u32, u32) {
    let groups = n.div_ceil(per_group).max(1);
    const MAX: usize = 65_535;
    if groups <= MAX {
        (groups as u32, 1)
    } else {
        (MAX as u32, groups.div_ceil(MAX) as u32)
    }
}
