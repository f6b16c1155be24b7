//! `pal data shared --root DIR --out DIR`: manifests from the shared real-audio folder.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Data commands.
#[derive(Subcommand)]
pub enum DataCommand {
    /// FSDD, ESC-10 and speech-sample manifests with held-out test splits.
    Shared(SharedArgs),
}

/// Arguments of `pal data shared`.
#[derive(Args)]
pub struct SharedArgs {
    /// The shared data folder (holds fsdd/, esc10/, speech_samples/).
    #[arg(long)]
    root: PathBuf,
    /// Where the manifests go.
    #[arg(long, default_value = "data")]
    out: PathBuf,
}

/// Runs a data command.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Shared(args) => {
            let summary = pal_data::shared::build_shared_manifests(&args.root, &args.out)?;
            for (path, n) in summary.manifests {
                println!("{}\t{n}", path.display());
            }
            Ok(())
        }
    }
}
