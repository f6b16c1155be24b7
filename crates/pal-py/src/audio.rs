//! Audio as Python users hold it: a path (`str` or `os.PathLike`), a file's `bytes`, or a
//! 1-D float32 numpy array (or torch tensor) of samples with its `sample_rate`.

use std::path::PathBuf;

use numpy::{PyReadonlyArray1, PyUntypedArrayMethods};
use pal_data::encoding::AudioInput;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::errors::bad_argument;

/// `obj` as an audio input, `argument` naming it in errors: a path, bytes, or samples (which
/// need `sample_rate`).
pub fn audio_input(
    obj: &Bound<'_, PyAny>,
    sample_rate: Option<u32>,
    argument: &str,
) -> PyResult<AudioInput> {
    if let Ok(s) = obj.cast::<PyString>() {
        let path = PathBuf::from(s.to_cow()?.as_ref());
        if !path.exists() {
            return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                "{argument}: {}: no such file",
                path.display()
            )));
        }
        return Ok(AudioInput::File(path));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        if b.as_bytes().is_empty() {
            return bad_argument(argument, "the bytes are empty");
        }
        return Ok(AudioInput::Encoded {
            bytes: b.as_bytes().to_vec(),
            origin: argument.to_string(),
        });
    }
    if let Ok(path) = obj.extract::<PathBuf>() {
        if !path.exists() {
            return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                "{argument}: {}: no such file",
                path.display()
            )));
        }
        return Ok(AudioInput::File(path));
    }
    // A torch tensor: its numpy view, on the CPU.
    let array = if obj.hasattr("detach")? && obj.hasattr("cpu")? {
        obj.call_method0("detach")?
            .call_method0("cpu")?
            .call_method0("numpy")?
    } else {
        obj.clone()
    };
    let samples = samples_of(&array, argument)?;
    let Some(rate) = sample_rate else {
        return bad_argument(
            argument,
            "samples need their sample_rate (for example sample_rate=16000)",
        );
    };
    if !(1000..=384_000).contains(&rate) {
        return bad_argument(
            "sample_rate",
            format!("{rate} Hz is outside 1000..=384000 Hz"),
        );
    }
    Ok(AudioInput::Samples {
        samples,
        rate,
        origin: argument.to_string(),
    })
}

/// The samples of a 1-D float32 array, checked: finite, not empty.
pub fn samples_of(array: &Bound<'_, PyAny>, argument: &str) -> PyResult<Vec<f32>> {
    let Ok(untyped) = array.cast::<numpy::PyUntypedArray>() else {
        return bad_argument(
            argument,
            format!(
                "expected a path, bytes, or a 1-D float32 numpy array, got {}",
                array.get_type().name()?
            ),
        );
    };
    if untyped.ndim() != 1 {
        return bad_argument(
            argument,
            format!(
                "samples must be a 1-D array (mono), got shape {:?}",
                untyped.shape()
            ),
        );
    }
    let Ok(typed) = array.extract::<PyReadonlyArray1<'_, f32>>() else {
        return bad_argument(
            argument,
            format!(
                "samples must be float32, got {} (convert with .astype(np.float32))",
                untyped.dtype()
            ),
        );
    };
    let samples: Vec<f32> = match typed.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => typed.as_array().to_vec(),
    };
    if samples.is_empty() {
        return bad_argument(argument, "the array has no samples");
    }
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return bad_argument(
            argument,
            format!("sample {i} is not finite (NaN or infinity)"),
        );
    }
    Ok(samples)
}

/// The samples of `input` at 16 kHz (decoding a file or bytes, resampling samples).
pub fn to_16k(input: &AudioInput) -> anyhow::Result<Vec<f32>> {
    let audio = match input {
        AudioInput::File(path) => pal_audio::load_audio(path)?,
        AudioInput::Encoded { bytes, origin } => {
            pal_audio::decode_bytes(bytes.clone(), None, origin)?
        }
        AudioInput::Samples {
            samples,
            rate,
            origin,
        } => {
            return Ok(pal_audio::resample(
                samples,
                *rate,
                pal_audio::SAMPLE_RATE,
                origin,
            )?)
        }
    };
    let origin = match input {
        AudioInput::File(path) => path.display().to_string(),
        _ => "audio".to_string(),
    };
    Ok(audio.to_16k(&origin)?.samples)
}
