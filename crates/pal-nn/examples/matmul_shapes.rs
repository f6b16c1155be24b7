//! Matrix-product throughput on SmolLM2-135M training shapes (batch 4, Nt 64, Na 256): candle's
//! `matmul` (each product split over rayon's threads) against `pal_nn::ops::matmul` (columns
//! split over candle's thread pool, one single-threaded gemm per part), measured side by side.
//!
//!     cargo run --release -p pal-nn --example matmul_shapes

use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!("| m x k x n | candle GFLOP/s | pal GFLOP/s |\n|---|---|---|");
    for (m, k, n) in [
        (256usize, 576usize, 576usize), // text rows x q/o projection
        (256, 576, 1536),               // gate/up
        (256, 1536, 576),               // down
        (1024, 384, 576),               // LAL projector (audio rows)
        (1024, 576, 384),               // LAL keys and values
        (252, 576, 49152),              // output projection on the loss rows
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let w_t = w.t()?;
        let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> candle_core::Result<f64> {
            f()?;
            let start = Instant::now();
            for _ in 0..20 {
                f()?;
            }
            Ok(start.elapsed().as_secs_f64() / 20.0)
        };
        let candle = time(&|| x.matmul(&w_t))?;
        let pal = time(&|| pal_nn::ops::matmul(&x, &w_t))?;
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        println!(
            "| {m} x {k} x {n} | {:.0} | {:.0} |",
            gflop / candle,
            gflop / pal
        );
    }
    Ok(())
}
