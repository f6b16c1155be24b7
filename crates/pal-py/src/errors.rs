//! pal's errors as Python exceptions, with the messages the command line prints (the file, line
//! or field at fault): a missing file is `FileNotFoundError`, a bad argument `ValueError`,
//! everything else a subclass of `pal.PalError` by where it went wrong.

use pyo3::exceptions::{PyException, PyFileNotFoundError, PyKeyboardInterrupt, PyValueError};
use pyo3::PyErr;

pyo3::create_exception!(pal, PalError, PyException, "Base class of every pal error.");
pyo3::create_exception!(
    pal,
    ModelError,
    PalError,
    "A model, its weights or its config could not be loaded or run."
);
pyo3::create_exception!(
    pal,
    AudioError,
    PalError,
    "Audio could not be decoded (corrupt, truncated, unsupported, too long)."
);
pyo3::create_exception!(
    pal,
    DataError,
    PalError,
    "A manifest, shard set or example is malformed (the error names the file and line)."
);
pyo3::create_exception!(
    pal,
    ConfigError,
    PalError,
    "A config, curriculum or probe suite is malformed (the error names the file and key)."
);
pyo3::create_exception!(pal, TrainError, PalError, "Training failed.");

/// The Python exception for an error from pal's libraries.
pub fn to_py(error: anyhow::Error) -> PyErr {
    let message = format!("{error:#}");
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<pal_audio::AudioError>() {
            return match &e.kind {
                pal_audio::AudioErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    PyFileNotFoundError::new_err(message)
                }
                _ => AudioError::new_err(message),
            };
        }
        if let Some(e) = cause.downcast_ref::<pal_models::ModelError>() {
            return match e {
                pal_models::ModelError::NotFound(_) => PyFileNotFoundError::new_err(message),
                _ => ModelError::new_err(message),
            };
        }
        if cause.downcast_ref::<pal_data::ManifestError>().is_some() {
            return DataError::new_err(message);
        }
        if let Some(e) = cause.downcast_ref::<pal_eval::runner::EvalError>() {
            return match e {
                pal_eval::runner::EvalError::Manifest(_)
                | pal_eval::runner::EvalError::Example(..) => DataError::new_err(message),
                pal_eval::runner::EvalError::Model(pal_models::ModelError::NotFound(_)) => {
                    PyFileNotFoundError::new_err(message)
                }
                _ => ModelError::new_err(message),
            };
        }
        if let Some(e) = cause.downcast_ref::<pal_train::TrainError>() {
            return match e {
                pal_train::TrainError::Stopped { .. } => PyKeyboardInterrupt::new_err(message),
                pal_train::TrainError::Config(..) => ConfigError::new_err(message),
                pal_train::TrainError::Manifest(_) | pal_train::TrainError::Example(..) => {
                    DataError::new_err(message)
                }
                pal_train::TrainError::Audio(_) => AudioError::new_err(message),
                pal_train::TrainError::Model(pal_models::ModelError::NotFound(_)) => {
                    PyFileNotFoundError::new_err(message)
                }
                pal_train::TrainError::Model(_) => ModelError::new_err(message),
                _ => TrainError::new_err(message),
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::NotFound {
                return PyFileNotFoundError::new_err(message);
            }
        }
    }
    PalError::new_err(message)
}

/// `Err(ValueError)` naming `argument`.
pub fn bad_argument<T>(argument: &str, message: impl std::fmt::Display) -> pyo3::PyResult<T> {
    Err(PyValueError::new_err(format!("{argument}: {message}")))
}

/// Maps a library result into a Python one.
pub trait OrPy<T> {
    /// The value, or the Python exception for the error.
    fn or_py(self) -> pyo3::PyResult<T>;
}

impl<T, E: Into<anyhow::Error>> OrPy<T> for Result<T, E> {
    fn or_py(self) -> pyo3::PyResult<T> {
        self.map_err(|e| to_py(e.into()))
    }
}
