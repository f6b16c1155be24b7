//! Throughput of the quantized products alone on SmolLM2-135M's weight shapes (30 layers of
//! Q4_1 and the Q8_0 output projection, random values, each in its own memory as in the model):
//! time per decoding step's products and multiply-adds per second at 1, 8 and 64 rows, to
//! compare with a whole step (`pal bench llm`) and with the CPU's peak.
//! `cargo run --release -p pal-nn --example quantized_kernel`
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use pal_nn::ops::QuantizedWeight;
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let device = Device::Cpu;
    let layer = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let mut shapes: Vec<(usize, usize, GgmlDType)> = (0..30)
        .flat_map(|_| layer.iter().map(|&(o, i)| (o, i, GgmlDType::Q4_1)))
        .collect();
    shapes.push((49152, 576, GgmlDType::Q8_0));
    let weights: Vec<QuantizedWeight> = shapes
        .iter()
        .map(|&(out, inp, dtype)| {
            let w = Tensor::randn(0f32, 0.05, (out, inp), &device)?;
            Ok(QuantizedWeight::from_qtensor(QTensor::quantize(&w, dtype)?)?.expect("quantized"))
        })
        .collect::<candle_core::Result<_>>()?;
    let params: usize = shapes.iter().map(|(o, i, _)| o * i).sum();
    for rows in [1, 8, 64] {
        let inputs: Vec<Tensor> = [576, 1536]
            .iter()
            .map(|&inp| Tensor::randn(0f32, 1.0, (rows, inp), &device))
            .collect::<candle_core::Result<_>>()?;
        let run = || -> candle_core::Result<()> {
            for w in &weights {
                let x = if w.dims().1 == 576 {
                    &inputs[0]
                } else {
                    &inputs[1]
                };
                w.matmul_t(x)?;
            }
            Ok(())
        };
        run()?;
        let reps = (200 / rows).max(3);
        let start = Instant::now();
        for _ in 0..reps {
            run()?;
        }
        let per_step = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{rows:>3} rows: {:.2} ms per step's products, {:.1} GMAC/s",
            per_step * 1e3,
            (params * rows) as f64 / per_step / 1e9
        );
    }
    Ok(())
}
