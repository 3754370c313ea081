//! GEMM throughput of `shaders/gemm.wgsl` on this machine's Vulkan device, beside the
//! `matrixmultiply` crate's sgemm on the CPU, measured in the same run.
//!
//! `cargo run --release -p gpuq-worker --example gemm_bench [-- OPTIONS]`
//!
//! - `--big`: also square 4096 (slow on lavapipe).
//! - `--square-only` / `--mlp-only`: only one of the two shape sets.
//! - `--variant gpu|cpu`: force a kernel variant (default: the one `Kernel::gemm` picks).
//! - `--shader PATH --tile T`: time another WGSL file with the same bindings and entry point
//!   `main`, dispatched over T×T tiles of C (for kernel development).
//!
//! Every figure is the best of three timed batches, each batch long enough (about 0.3 s) to
//! swamp the timer and the submit overhead, after a warm-up; GPU batches end with `gpu.wait()`.
//! The CPU baseline is `matrixmultiply::sgemm` plus the same bias/activation pass, single-threaded
//! (the crate's `threading` feature is off in this workspace), and also split by rows over two
//! threads (the machine's core count, which lavapipe uses too).

use gpuq_worker::gpu::Gpu;
use gpuq_worker::gpu::gemm::{GemmParams, GemmVariant};
use gpuq_worker::gpu::kernels::{Activation, Kernel};
use std::time::{Duration, Instant};

struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    bias: bool,
    act: Activation,
}

fn square(n: usize) -> Shape {
    Shape {
        name: "square",
        m: n,
        n,
        k: n,
        ta: false,
        tb: false,
        bias: false,
        act: Activation::Identity,
    }
}

fn mlp_shapes() -> Vec<Shape> {
    let s = |name, m, n, k, ta, tb, bias, act| Shape {
        name,
        m,
        n,
        k,
        ta,
        tb,
        bias,
        act,
    };
    use Activation::*;
    vec![
        s(
            "fwd hidden X·W1ᵀ+b relu",
            256,
            64,
            64,
            false,
            true,
            true,
            Relu,
        ),
        s(
            "fwd output H·W2ᵀ+b",
            256,
            10,
            64,
            false,
            true,
            true,
            Identity,
        ),
        s("grad W1 Dᵀ·X", 64, 64, 256, true, false, false, Identity),
        s(
            "grad input D·W2",
            256,
            64,
            10,
            false,
            false,
            false,
            Identity,
        ),
        s("eval X·W1ᵀ+b relu", 1347, 64, 64, false, true, true, Relu),
    ]
}

/// Best seconds per call of `f` over three batches of about `batch` each, after a warm-up.
fn best_time(batch: Duration, mut f: impl FnMut(usize)) -> f64 {
    f(1);
    let t = Instant::now();
    f(1);
    let one = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((batch.as_secs_f64() / one) as usize).clamp(1, 10_000);
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f(reps);
            t.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn cpu_gemm(a: &[f32], b: &[f32], bias: &[f32], c: &mut [f32], s: &Shape, rows: (usize, usize)) {
    let (m0, m1) = rows;
    let (rsa, csa) = if s.ta { (1, s.m) } else { (s.k, 1) };
    let (rsb, csb) = if s.tb { (1, s.k) } else { (s.n, 1) };
    unsafe {
        matrixmultiply::sgemm(
            m1 - m0,
            s.k,
            s.n,
            1.0,
            a.as_ptr().add(m0 * rsa),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            s.n as isize,
            1,
        );
    }
    if s.bias || s.act != Activation::Identity {
        for row in c.chunks_mut(s.n) {
            for (j, v) in row.iter_mut().enumerate() {
                let z = if s.bias { *v + bias[j] } else { *v };
                *v = match s.act {
                    Activation::Identity => z,
                    Activation::Relu => z.max(0.0),
                    Activation::Tanh => z.tanh(),
                };
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let opt = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let gpu = Gpu::new().expect("a Vulkan device");
    let variant = match opt("--variant").as_deref() {
        Some("gpu") => GemmVariant::Gpu,
        Some("cpu") => GemmVariant::Cpu,
        Some(v) => panic!("--variant gpu|cpu, not {v}"),
        None => GemmVariant::for_device(&gpu),
    };
    let custom = opt("--shader").map(|path| {
        let src = std::fs::read_to_string(&path).expect("--shader file");
        let tile: u32 = opt("--tile").map_or(64, |t| t.parse().expect("--tile T"));
        let leaked: &'static str = Box::leak(path.clone().into_boxed_str());
        (gpu.pipeline(leaked, &src, "main"), tile, path)
    });

    println!("device: {} ({:?})", gpu.info.name, gpu.info.device_type);
    match &custom {
        Some((_, tile, path)) => println!("kernel: {path} ({tile}×{tile} tiles)"),
        None => println!("kernel: shaders/gemm.wgsl, {variant:?} variant"),
    }
    println!(
        "CPU baseline: matrixmultiply 0.3 sgemm (+ bias/activation), single-threaded (the \
         crate's `threading` feature is not enabled); \"CPU×2\" splits the rows over 2 threads"
    );
    println!("each figure: best of 3 timed batches of ~0.3 s after a warm-up\n");
    println!(
        "{:<26} {:>16} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "shape", "m×n×k", "GPU GF/s", "CPU GF/s", "CPU×2", "GPU/CPU", "GPU/CPU×2"
    );

    let mut shapes = Vec::new();
    if !flag("--mlp-only") {
        let mut sizes = vec![256, 512, 1024, 2048];
        if flag("--big") {
            sizes.push(4096);
        }
        shapes.extend(sizes.into_iter().map(square));
    }
    if !flag("--square-only") {
        shapes.extend(mlp_shapes());
    }

    let batch = Duration::from_millis(300);
    for s in shapes {
        let seed = |len: usize, mul: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * mul) % 13) as f32 / 13.0 - 0.5)
                .collect()
        };
        let a = seed(s.m * s.k, 7);
        let b = seed(s.k * s.n, 5);
        let bias = seed(s.n, 3);
        let flops = 2.0 * (s.m * s.n * s.k) as f64;

        let (ab, bb, cb, biasb) = (
            gpu.upload("a", &a),
            gpu.upload("b", &b),
            gpu.zeros("c", s.m * s.n),
            gpu.upload("bias", &bias),
        );
        let act = s.act;
        let p = GemmParams::new(s.m, s.n, s.k, s.ta, s.tb).with_epilogue(s.bias, act);
        let u = gpu.uniform(&p);
        let buffers = [&ab, &bb, &cb, &u, &biasb];
        let gpu_s = match &custom {
            Some((pipeline, tile, _)) => {
                let bind = gpu.bind_group(pipeline, &buffers);
                let groups = ((s.n as u32).div_ceil(*tile), (s.m as u32).div_ceil(*tile));
                best_time(batch, |reps| {
                    let mut enc = gpu.encoder();
                    for _ in 0..reps {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, &bind, &[]);
                        pass.dispatch_workgroups(groups.0, groups.1, 1);
                    }
                    gpu.submit(enc);
                    gpu.wait();
                })
            }
            None => {
                let kernel = Kernel::gemm_variant(&gpu, variant);
                let bind = kernel.bind(&gpu, &buffers);
                best_time(batch, |reps| {
                    let mut enc = gpu.encoder();
                    for _ in 0..reps {
                        kernel.encode(&mut enc, &bind, p.groups());
                    }
                    gpu.submit(enc);
                    gpu.wait();
                })
            }
        };

        let mut c = vec![0f32; s.m * s.n];
        let cpu_s = best_time(batch, |reps| {
            for _ in 0..reps {
                cpu_gemm(&a, &b, &bias, &mut c, &s, (0, s.m));
            }
        });
        let half = s.m / 2;
        let (c0, c1) = c.split_at_mut(half * s.n);
        let cpu2_s = best_time(batch, |reps| {
            let (c0, c1) = (&mut *c0, &mut *c1);
            std::thread::scope(|scope| {
                let (a, b, bias, s) = (&a, &b, &bias, &s);
                scope.spawn(move || {
                    for _ in 0..reps {
                        cpu_gemm(a, b, bias, c0, s, (0, half));
                    }
                });
                for _ in 0..reps {
                    cpu_gemm(a, b, bias, c1, s, (half, s.m));
                }
            })
        });

        let (g, c1, c2) = (
            flops / gpu_s / 1e9,
            flops / cpu_s / 1e9,
            flops / cpu2_s / 1e9,
        );
        let dims = format!(
            "{}×{}×{}{}{}",
            s.m,
            s.n,
            s.k,
            if s.ta { " Aᵀ" } else { "" },
            if s.tb { " Bᵀ" } else { "" }
        );
        let name = if s.name == "square" {
            format!("square {}", s.n)
        } else {
            s.name.to_string()
        };
        println!(
            "{name:<26} {dims:>16} {g:>10.1} {c1:>10.1} {c2:>10.1} {:>8.3} {:>8.3}",
            g / c1,
            g / c2
        );
    }
}
