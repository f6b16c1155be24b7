//! Helpers shared by the `pal` binary's end-to-end tests (each test file includes this module).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `pal` binary built for these tests.
pub fn pal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pal"))
}

/// Whether both base models are fetched (skips the test when not, unless models are required).
pub fn models_present() -> bool {
    pal_assets::for_test(&pal_assets::SMOLLM2_135M).is_some()
        && pal_assets::for_test(&pal_assets::WHISPER_TINY_EN).is_some()
}

/// The test venv's Python (`openai`, `numpy`, `safetensors`; `scripts/test.sh` makes it), or
/// None to skip (an error when models are required).
pub fn python() -> Option<String> {
    match std::env::var("PAL_TEST_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var("PAL_REQUIRE_MODELS").as_deref() == Ok("1") => {
            panic!("PAL_TEST_PYTHON must name the test venv's Python (scripts/test.sh makes one)")
        }
        Err(_) => None,
    }
}
