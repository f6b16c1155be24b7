//! Matrix-product throughput on training shapes, side by side: candle's `matmul` (each product
//! split over rayon's threads), `pal_nn::ops::matmul` (f32, columns split over candle's thread
//! pool, one single-threaded gemm per part), and pal's bf16 products against a packed frozen
//! weight on every bf16 kernel this CPU has (AMX, AVX512-BF16; f32 accumulation, the f32 input
//! rounded and packed inside the timed product). GFLOP/s; `--json` prints one JSON line per
//! shape for `scripts/bench_matmul.py`.
//!
//! `--shapes` prints the shapes it would time (JSON lines) and times nothing. The `pal` binary
//! keeps freed memory in the process (`mallopt`); give this example the same allocator with
//! glibc's variables, as `scripts/bench_matmul.py` does, or each product's output is mapped and
//! zeroed afresh:
//!
//!     MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647 \
//!         cargo run --release -p pal-nn --example matmul_shapes [-- --json] [M,K,N ...]

use std::time::Instant;

use candle_core::{Device, Tensor};
use pal_nn::ops::bf16::{self, Bf16Kernel, PackedWeight};

/// SmolLM2-135M training shapes (batch 4, Nt 64, Na 256) and Llama-3.2-1B ones.
const SHAPES: [(usize, usize, usize); 10] = [
    (256, 576, 576),    // text rows x q/o projection
    (256, 576, 1536),   // gate/up
    (256, 1536, 576),   // down
    (1024, 384, 576),   // LAL projector (audio rows)
    (1024, 576, 384),   // LAL keys and values
    (252, 576, 49152),  // output projection on the loss rows
    (256, 2048, 8192),  // Llama-3.2-1B gate/up
    (256, 8192, 2048),  // Llama-3.2-1B down
    (1024, 2048, 512),  // Llama-3.2-1B LAL keys and values
    (2048, 4096, 4096), // a large square-ish product
];

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let shapes: Vec<(usize, usize, usize)> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| {
            let v: Vec<usize> = a.split(',').filter_map(|x| x.parse().ok()).collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .collect();
    let shapes = if shapes.is_empty() {
        SHAPES.to_vec()
    } else {
        shapes
    };
    if args.iter().any(|a| a == "--shapes") {
        for (m, k, n) in shapes {
            println!("{{\"m\": {m}, \"k\": {k}, \"n\": {n}}}");
        }
        return Ok(());
    }
    let kernels: Vec<Bf16Kernel> = [Bf16Kernel::Avx512, Bf16Kernel::Amx]
        .into_iter()
        .filter(|k| k.available())
        .collect();
    let dev = Device::Cpu;
    if !json {
        let names: Vec<&str> = kernels.iter().map(|k| k.name()).collect();
        println!(
            "| m x k x n | candle f32 | pal f32 | {} |\n|---|---|---|{}",
            names
                .iter()
                .map(|n| format!("pal bf16 ({n})"))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(names.len())
        );
    }
    for (m, k, n) in shapes {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let w_t = w.t()?;
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        let rounds = ((20.0 / gflop) as usize).clamp(3, 50);
        let time = |f: &dyn Fn() -> candle_core::Result<()>| -> candle_core::Result<f64> {
            f()?;
            let start = Instant::now();
            for _ in 0..rounds {
                f()?;
            }
            Ok(gflop * rounds as f64 / start.elapsed().as_secs_f64())
        };
        let candle = time(&|| x.matmul(&w_t).map(drop))?;
        let pal = time(&|| pal_nn::ops::matmul(&x, &w_t).map(drop))?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let packed = PackedWeight::new(&w.flatten_all()?.to_vec1::<f32>()?, n, k, k, 1);
        let mut bf16_rates = vec![];
        for &kernel in &kernels {
            bf16_rates.push(time(&|| {
                drop(bf16::product_on(kernel, &xs, m, &packed));
                Ok(())
            })?);
        }
        if json {
            let kernels: Vec<String> = kernels
                .iter()
                .zip(&bf16_rates)
                .map(|(k, r)| format!("\"{}\": {r:.1}", k.name()))
                .collect();
            println!(
                "{{\"m\": {m}, \"k\": {k}, \"n\": {n}, \"candle_f32\": {candle:.1}, \"pal_f32\": {pal:.1}, \"pal_bf16\": {{{}}}}}",
                kernels.join(", ")
            );
        } else {
            let rates: Vec<String> = bf16_rates.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "| {m} x {k} x {n} | {candle:.0} | {pal:.0} | {} |",
                rates.join(" | ")
            );
        }
    }
    Ok(())
}
