//! `pal probe --suite SUITE.toml`: compare encoders and integration modes by what the frozen LLM
//! can do with their features (a grid of cells trained and evaluated in child processes,
//! resumable), then write `probe.json` and `probe.md` in the suite's output folder.
//! `pal probe attention --model RUN --audio FILE "question"`: where in the LLM the audio is read.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `pal probe`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProbeArgs {
    /// Another probe than the grid.
    #[command(subcommand)]
    command: Option<ProbeCommand>,
    /// The suite (TOML): encoders, modes, seeds, splits, sweeps; see `crates/pal-eval/src/probe.rs`.
    #[arg(long, required = true)]
    suite: Option<PathBuf>,
    /// Also write the markdown report here (for example `docs/probe.md`).
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Probes other than the grid.
#[derive(Subcommand)]
pub enum ProbeCommand {
    /// Per LLM layer, the share of the text queries' attention on audio keys (LAL), audio tokens
    /// (PLITS, PAL summary) and text, for one clip and question: a table, JSON and a PNG.
    Attention(AttentionArgs),
}

/// Arguments of `pal probe attention`.
#[derive(Args)]
pub struct AttentionArgs {
    /// Run folder (model.toml + adapter.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// The clip (wav, flac, ogg, mp3).
    #[arg(long)]
    audio: PathBuf,
    /// The question.
    question: String,
    /// Most tokens of the answer the shares are measured over.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Folder for `attention.md`, `attention.json` and `attention.png`.
    #[arg(long, default_value = "attention")]
    out: PathBuf,
}

/// Runs `pal probe attention`: answers, measures, prints the table and writes the files.
fn attention(args: AttentionArgs) -> anyhow::Result<()> {
    let mut built = super::load_run(
        &args.model,
        super::WeightsArg {
            weights: pal_models::WeightForm::Auto,
        },
        super::DeviceArgs::default(),
    )?;
    // The probabilities are kept by the f32 attention only (not by the bf16 prefix kernel).
    built.model.llm.bf16_prefix = false;
    let audio = pal_audio::load_audio(&args.audio)?.to_16k(&args.audio.display().to_string())?;
    let outputs = built
        .encode_clip(&audio.samples)
        .with_context(|| format!("encoding {}", args.audio.display()))?;
    let report = pal_eval::probe_attention::attention_shares(
        &built,
        outputs,
        &args.question,
        args.max_tokens,
    )?;
    let table = pal_eval::probe_attention::markdown(&report);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(args.out.join("attention.md"), &table)?;
    std::fs::write(
        args.out.join("attention.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    pal_eval::probe_attention::plot(&report, &args.out.join("attention.png"))?;
    println!("{table}");
    eprintln!("wrote {}/attention.{{md,json,png}}", args.out.display());
    Ok(())
}

/// Runs the cells not done yet, aggregates all, and writes the results; or another probe.
pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let suite = match (args.command, args.suite) {
        (Some(ProbeCommand::Attention(a)), _) => return attention(a),
        (None, Some(suite)) => suite,
        (None, None) => anyhow::bail!("pal probe needs --suite SUITE.toml (or a subcommand)"),
    };
    // Checked once here; each cell's command is made the same way.
    crate::self_command()?;
    let pal = |a: &[String]| {
        let mut cmd = crate::self_command().expect("checked above");
        cmd.args(a);
        cmd
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("probe [{bar:30}] {pos}/{len} cells eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let (out, results) = pal_eval::probe::run(&suite, &pal, |done, total, cell| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{} {:?} seed {}", cell.row, cell.mode, cell.seed));
    })?;
    bar.finish_and_clear();
    let suite_name = suite.display().to_string();
    let (rows, md) = pal_eval::probe_report::write_report(&out, &suite_name, &results)?;
    let table = pal_eval::probe_table::markdown(&rows);
    if let Some(report) = &args.report {
        std::fs::write(report, &md)?;
        std::fs::copy(out.join("probe.png"), report.with_file_name("probe.png"))?;
    }
    println!("{table}");
    Ok(())
}
