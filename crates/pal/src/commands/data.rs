//! `pal data shared --root DIR --out DIR`: manifests from the shared real-audio folder;
//! `pal data instruct`: the multi-task instruction set (shared audio plus generated clips);
//! `pal data ood`: the out-of-distribution check set for well-formed answers;
//! `pal data long`: long recordings (digit strings, sound counts, first heard) of 30 s to 10 min;
//! `pal data text-questions`: the instruction set's clips asked questions unrelated to them, with
//! the LLM's own answers as references.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Data commands.
#[derive(Subcommand)]
pub enum DataCommand {
    /// FSDD, ESC-10 and speech-sample manifests with held-out validation and test splits, and
    /// FSDD held out by speaker (`fsdd-speakers/SPEAKER/`: trained on the five others).
    Shared(SharedArgs),
    /// The multi-task instruction set: the shared real audio plus generated beeps, noises,
    /// chords and espeak-ng speech, each with held-out validation and test splits.
    Instruct(InstructArgs),
    /// The out-of-distribution check set: real and long speech, music, noise, silence and
    /// joined sounds of 1 to 120 s, four questions each, for the well-formedness of answers.
    Ood(OodArgs),
    /// Long recordings: FSDD digit strings, ESC-10 sound counts and when a sound is first heard,
    /// spread over 30 s to 10 min of faint noise, with held-out validation and test splits and a
    /// manifest per length.
    Long(LongArgs),
    /// Questions about two clips (which has the dog, same digit, which is louder, what is in
    /// each), for models with `max_clips = 2`, with held-out validation and test splits.
    Pairs(PairsArgs),
    /// The instruction set's clips (of `pal data instruct`, in its folder) asked questions
    /// unrelated to them, each answered by the LLM without audio: the reference a clip must not
    /// change (`TASK = text-questions`, with held-out validation and test questions).
    TextQuestions(TextQuestionsArgs),
}

/// Arguments of `pal data text-questions`.
#[derive(Args)]
pub struct TextQuestionsArgs {
    /// The instruction set's folder (`pal data instruct --out`); `text-questions/` is written
    /// in it.
    #[arg(long, default_value = "data/instruct")]
    instruct: PathBuf,
    /// The LLM that answers (HF folder or GGUF; default: the fetched SmolLM2-135M-Instruct):
    /// the one the adapters to be trained or evaluated attach to.
    #[arg(long)]
    llm: Option<PathBuf>,
    /// Most tokens of an answer; a question whose answer runs longer is left out.
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
    /// Seed of the draw of a question per clip.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    weights: super::WeightsArg,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Arguments of `pal data pairs`.
#[derive(Args)]
pub struct PairsArgs {
    /// The shared data folder (fsdd/, esc10/).
    #[arg(long)]
    root: PathBuf,
    /// Where the manifests (and the `louder` pairs' audio) go.
    #[arg(long, default_value = "data/pairs")]
    out: PathBuf,
    /// Seed of every random draw (the same seed gives the same files).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pairs per task in the train split.
    #[arg(long, default_value_t = 400)]
    train: usize,
    /// Pairs per task in each of the validation and test splits.
    #[arg(long, default_value_t = 100)]
    held_out: usize,
}

/// Arguments of `pal data long`.
#[derive(Args)]
pub struct LongArgs {
    /// The shared data folder (fsdd/, esc10/).
    #[arg(long)]
    root: PathBuf,
    /// Where the manifests and recordings go.
    #[arg(long, default_value = "data/long")]
    out: PathBuf,
    /// Seed of every random draw (the same seed gives the same files).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recording lengths of the train split, seconds (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "30,120")]
    train_seconds: Vec<f32>,
    /// Recording lengths of the validation and test splits, seconds (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "30,120,600")]
    held_out_seconds: Vec<f32>,
    /// Recordings per task and length in the train split.
    #[arg(long, default_value_t = 48)]
    train_per_length: usize,
    /// Recordings per task and length in the validation and test splits.
    #[arg(long, default_value_t = 10)]
    held_out_per_length: usize,
}

/// Arguments of `pal data ood`.
#[derive(Args)]
pub struct OodArgs {
    /// The shared data folder (speech_samples/, esc10/, fsdd/).
    #[arg(long)]
    root: PathBuf,
    /// Where the check set (`test.jsonl`), its validation twin (`validation.jsonl`) and their
    /// clips go.
    #[arg(long, default_value = "data/ood")]
    out: PathBuf,
    /// Seed of every random draw (the same seed gives the same files).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Arguments of `pal data instruct`.
#[derive(Args)]
pub struct InstructArgs {
    /// The shared data folder (fsdd/, esc10/, speech_samples/); without it only the generated
    /// tasks are built.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Where the manifests and generated audio go.
    #[arg(long, default_value = "data/instruct")]
    out: PathBuf,
    /// Seed of every random draw (the same seed gives the same files).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Generated clips per task in each train split (validation and test get a quarter as many).
    #[arg(long, default_value_t = 160)]
    generated: usize,
    /// Skip the espeak-ng speech task.
    #[arg(long)]
    no_espeak: bool,
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

/// Prints each manifest written, with its line count.
fn print_manifests(summary: &pal_data::shared::BuildSummary) {
    for (path, n) in &summary.manifests {
        println!("{}\t{n}", path.display());
    }
}

/// Runs a data command.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Shared(args) => {
            let summary = pal_data::shared::build_shared_manifests(&args.root, &args.out)?;
            print_manifests(&summary);
            let speakers = pal_data::shared::build_fsdd_speaker_splits(&args.root, &args.out)?;
            print_manifests(&speakers);
            Ok(())
        }
        DataCommand::Pairs(args) => {
            let summary =
                pal_data::clip_pairs::build_clip_pairs(&pal_data::clip_pairs::PairOptions {
                    root: args.root,
                    out: args.out,
                    seed: args.seed,
                    train: args.train,
                    held_out: args.held_out,
                })?;
            print_manifests(&summary);
            Ok(())
        }
        DataCommand::Long(args) => {
            let summary =
                pal_data::long_form::build_long_form(&pal_data::long_form::LongFormOptions {
                    root: args.root,
                    out: args.out,
                    seed: args.seed,
                    train_seconds: args.train_seconds,
                    held_out_seconds: args.held_out_seconds,
                    train_per_length: args.train_per_length,
                    held_out_per_length: args.held_out_per_length,
                })?;
            print_manifests(&summary);
            Ok(())
        }
        DataCommand::TextQuestions(args) => text_questions(args),
        DataCommand::Ood(args) => {
            let summary = pal_data::ood::build_ood_set(&args.root, &args.out, args.seed)?;
            print_manifests(&summary);
            Ok(())
        }
        DataCommand::Instruct(args) => {
            let summary =
                pal_data::instruct::build_instruction_set(&pal_data::instruct::InstructOptions {
                    root: args.root,
                    out: args.out,
                    seed: args.seed,
                    espeak: !args.no_espeak,
                    generated_per_task: args.generated,
                })?;
            print_manifests(&summary);
            Ok(())
        }
    }
}

/// `pal data text-questions`: every question answered greedily by the LLM in one batch, in its
/// chat template, without audio.
fn text_questions(args: TextQuestionsArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let path = super::resolve_llm(args.llm)?;
    let device = args.device.device.open()?;
    let (model, tokenizer, _) = pal_models::load_llm_held(
        &path,
        args.device.precision().dtype,
        &device,
        args.weights.weights,
    )
    .with_context(|| format!("loading the LLM from {}", path.display()))?;
    let template = pal_infer::ChatTemplate::for_tokenizer(&tokenizer)?;
    let params = pal_infer::GenerationParams {
        max_tokens: args.max_tokens,
        ..Default::default()
    };
    let answer = |questions: &[&str]| -> anyhow::Result<Vec<Option<String>>> {
        let prompts = questions
            .iter()
            .map(|q| {
                let prompt = template.render(&[pal_infer::Message::new("user", *q)], true)?;
                Ok(tokenizer.encode(&prompt)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let generated = pal_infer::generate(&model, &tokenizer, &prompts, &params, |_, _| {})?;
        // An answer that did not end is no reference: its question is left out.
        Ok(generated
            .into_iter()
            .map(|g| (g.finish_reason == pal_infer::FinishReason::Stop).then_some(g.text))
            .collect())
    };
    let built =
        pal_data::text_questions::build_text_questions(&args.instruct, args.seed, |questions| {
            answer(questions).map_err(|e| pal_data::shared::BuildError {
                path: path.clone(),
                message: format!("answering the text questions: {e:#}"),
            })
        })?;
    print_manifests(&built.summary);
    if !built.left_out.is_empty() {
        eprintln!(
            "left out {} questions whose answer did not end within {} tokens: {:?}",
            built.left_out.len(),
            args.max_tokens,
            built.left_out
        );
    }
    Ok(())
}
