//! `pal selftest [--device cpu|cuda] [--json FILE]`: whether pal computes correctly on a device
//! (see `pal_bench::selftest`); exits non-zero when a check fails.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use clap::Args;

/// Arguments of `pal selftest`.
#[derive(Args)]
pub struct SelftestArgs {
    /// `cpu`, or `cuda` (GPU 0; needs a build with `--features cuda`, see scripts/build_cuda.sh).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also write the checks as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the checks and prints them.
pub fn run(args: SelftestArgs) -> anyhow::Result<()> {
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0).context(
            "no CUDA device: this pal was built without the `cuda` feature (scripts/build_cuda.sh), or the driver found no GPU",
        )?,
        other => anyhow::bail!("unknown device '{other}' (cpu or cuda)"),
    };
    let report = pal_bench::selftest::run(&device)?;
    println!("{}", report.markdown());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(report.passed(), "some checks failed on {}", report.device);
    Ok(())
}
