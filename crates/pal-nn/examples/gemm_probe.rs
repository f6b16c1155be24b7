use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (m, k, n) in [
        (256usize, 576usize, 576usize),
        (256, 576, 1536),
        (256, 1536, 576),
        (1024, 576, 192),
        (1024, 384, 576),
        (252, 576, 49152),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let wt = w.t()?.contiguous()?;
        let reps = 20;
        let _ = x.matmul(&w.t()?)?;
        let t = Instant::now();
        for _ in 0..reps {
            let _ = x.matmul(&w.t()?)?;
        }
        let a = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            let _ = x.matmul(&wt)?;
        }
        let b = t.elapsed().as_secs_f64() / reps as f64;
        let gf = 2.0 * (m * k * n) as f64 / 1e9;
        println!(
            "{m}x{k}x{n}: W^T {:.1} GFLOP/s, contiguous {:.1} GFLOP/s",
            gf / a,
            gf / b
        );
    }
    Ok(())
}
