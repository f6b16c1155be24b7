//! The native module of the `pal` Python package (`pal._pal`): thin bindings over pal's library
//! crates, the same functions the command line calls. The package's Python layer
//! (`python/pal/`) re-exports these with type stubs, and adds the probe of Python encoders.

mod audio;
mod errors;
mod model;
mod probe;
mod run;
mod shards;

use pyo3::prelude::*;

/// The module `pal._pal`.
#[pymodule(name = "_pal")]
mod native {
    use super::*;

    #[pymodule_export]
    use crate::errors::{AudioError, ConfigError, DataError, ModelError, PalError, TrainError};
    #[pymodule_export]
    use crate::model::{AudioLlm, Conversation};
    #[pymodule_export]
    use crate::probe::{
        external_suite, load_audio, manifest_records, probe_report, probe_run, suite_manifests,
    };
    #[pymodule_export]
    use crate::run::{cli, encode, evaluate, fetch, train};
    #[pymodule_export]
    use crate::shards::ShardWriter;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        let kernels: Vec<&str> = pal_nn::ops::bf16::Bf16Kernel::ALL
            .into_iter()
            .filter(|k| k.available())
            .map(|k| k.name())
            .collect();
        m.add("bf16_kernels", kernels)
    }
}
