//! `pal selftest [--device cpu|cuda] [--json FILE]`: whether pal computes correctly on a device
//! (see `pal_bench::selftest`); exits non-zero when a check fails.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Arguments of `pal selftest`.
#[derive(Args)]
pub struct SelftestArgs {
    /// `cpu`, or `cuda` (GPU 0; needs a build with `--features cuda`, see scripts/build_cuda.sh).
    #[arg(long, default_value = "cpu")]
    device: pal_nn::ComputeDevice,
    /// Also write the checks as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the checks and prints them.
pub fn run(args: SelftestArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let report = pal_bench::selftest::run(&device)?;
    println!("{}", report.markdown());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(report.passed(), "some checks failed on {}", report.device);
    Ok(())
}
