//! GEMM throughput of `shaders/gemm.wgsl` on this machine's Vulkan device, beside the
//! `matrixmultiply` crate's single-threaded sgemm on the CPU, measured in the same run.
//! `cargo run --release -p gpuq-worker --example gemm_bench [SIZES…]` (default 256 512 1024 2048).

use gpuq_worker::gpu::Gpu;
use gpuq_worker::gpu::kernels::{GemmParams, Kernel};
use std::time::Instant;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![256, 512, 1024, 2048]
    } else {
        sizes
    };
    let gpu = Gpu::new().expect("a Vulkan device");
    println!("device: {} ({:?})", gpu.info.name, gpu.info.device_type);
    println!(
        "{:>6} {:>12} {:>12} {:>8}",
        "n", "GPU GFLOP/s", "CPU GFLOP/s", "ratio"
    );
    for n in sizes {
        let a: Vec<f32> = (0..n * n).map(|i| ((i * 7) % 13) as f32 / 13.0).collect();
        let b: Vec<f32> = (0..n * n).map(|i| ((i * 5) % 11) as f32 / 11.0).collect();
        let flops = 2.0 * (n as f64).powi(3);

        let (ab, bb, cb) = (
            gpu.upload("a", &a),
            gpu.upload("b", &b),
            gpu.zeros("c", n * n),
        );
        let p = GemmParams::new(n, n, n, false, false);
        let u = gpu.uniform(&p);
        let k = Kernel::gemm(&gpu);
        let bind = k.bind(&gpu, &[&ab, &bb, &cb, &u]);
        let run = |reps: usize| {
            let mut enc = gpu.encoder();
            for _ in 0..reps {
                k.encode(&mut enc, &bind, p.groups());
            }
            gpu.submit(enc);
            gpu.wait();
        };
        run(1);
        let reps = ((2e11 / flops) as usize).clamp(1, 200);
        let t = Instant::now();
        run(reps);
        let gpu_gflops = flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9;

        let mut c = vec![0f32; n * n];
        let cpu_reps = ((2e10 / flops) as usize).clamp(1, 20);
        let t = Instant::now();
        for _ in 0..cpu_reps {
            unsafe {
                matrixmultiply::sgemm(
                    n,
                    n,
                    n,
                    1.0,
                    a.as_ptr(),
                    n as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        }
        let cpu_gflops = flops * cpu_reps as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!(
            "{n:>6} {gpu_gflops:>12.1} {cpu_gflops:>12.1} {:>8.2}",
            gpu_gflops / cpu_gflops
        );
    }
}
