//! Writes the hostile audio files of [`pal_audio::hostile::write_files`] into a folder, for
//! load tests that drive a server from outside the process (`scripts/soak_serve.py`).
//!
//! `cargo run --release -p pal-audio --example hostile_audio -- OUT_DIR`

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: hostile_audio OUT_DIR"),
    );
    let ogg =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tone.ogg"))?;
    pal_audio::hostile::write_files(&out, &ogg)?;
    println!("{}", out.display());
    Ok(())
}
