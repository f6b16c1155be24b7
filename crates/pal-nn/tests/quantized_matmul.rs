//! Products against quantized weights agree with the f32 product on the dequantized weights,
//! for every block format, for a decoding step (one row) and a prefill (many rows, several
//! groups of eight), on weights whose row counts do and do not fill tiles of sixteen rows.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use pal_nn::ops::QuantizedWeight;

/// Largest error relative to the largest output. pal's kernels quantize activations to 16 bits
/// per block of 32 (scale amax / 32767, about 1.5e-5 of each block's largest value); candle's
/// products (Q5_1 here) to 8 bits.
fn tolerance(dtype: GgmlDType) -> f32 {
    match dtype {
        GgmlDType::Q5_1 => 2e-2,
        _ => 1e-3,
    }
}

#[test]
fn quantized_products_match_f32_on_dequantized_weights() -> Result<()> {
    let device = Device::Cpu;
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        for (out, inp) in [(72, 256), (40, 576), (24, 1536), (64, 576)] {
            if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) && inp % 256 != 0 {
                continue;
            }
            let w = Tensor::randn(0f32, 0.05, (out, inp), &device)?;
            let q =
                QuantizedWeight::from_qtensor(QTensor::quantize(&w, dtype)?)?.expect("quantized");
            let dequantized = q.dequantize()?;
            for rows in [1, 3, 8, 13, 40] {
                let x = Tensor::randn(0f32, 1.0, (rows, inp), &device)?;
                let expected = x.matmul(&dequantized.t()?)?;
                let got = q.matmul_t(&x)?;
                assert_eq!(got.dims(), &[rows, out]);
                let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?;
                let err = (got - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    err <= tolerance(dtype) * scale,
                    "{dtype:?} ({out}, {inp}) x {rows} rows: error {err} against scale {scale}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn a_batch_of_inputs_keeps_its_leading_dimensions() -> Result<()> {
    let device = Device::Cpu;
    let w = Tensor::randn(0f32, 0.05, (16, 64), &device)?;
    let q =
        QuantizedWeight::from_qtensor(QTensor::quantize(&w, GgmlDType::Q4_1)?)?.expect("quantized");
    let x = Tensor::randn(0f32, 1.0, (2, 3, 64), &device)?;
    let batched = q.matmul_t(&x)?;
    assert_eq!(batched.dims(), &[2, 3, 16]);
    let flat = q.matmul_t(&x.reshape((6, 64))?)?;
    let diff = (batched.reshape((6, 16))? - flat)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert_eq!(diff, 0.0);
    Ok(())
}
