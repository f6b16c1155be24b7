//! JSONL manifests, one example per line, in either of two forms:
//!
//! ```json
//! {"audio": "clips/a.wav", "messages": [{"role": "user", "content": "Which digit is spoken?"},
//!                                        {"role": "assistant", "content": "seven"}]}
//! {"audio_id": "clips/a.wav", "instruction": "Which digit is spoken?", "output": "seven"}
//! ```
//!
//! The second is the LTU / OpenAQA layout. Audio paths are relative to the manifest's folder.
//!
//! An example about several clips lists them, and marks where each goes in the conversation
//! with `<|pal_audio|>` (in order; a model takes up to its config's `max_clips`):
//!
//! ```json
//! {"audio": ["a.wav", "b.wav"], "messages": [{"role": "user", "content":
//!   "First clip: <|pal_audio|>\nSecond clip: <|pal_audio|>\nWhich clip has the dog?"},
//!   {"role": "assistant", "content": "the second"}]}
//! ```
//!
//! One clip needs no marker (it goes at the start of the first user message).
//! A malformed line or a missing audio file is an error naming the file and line; with
//! `skip_bad`, such lines are skipped with a warning each and counted, never dropped silently.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use pal_models::text::chat_template::Message;
use pal_models::text::segments::AUDIO_MARKER;

/// One example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The audio files (resolved against the manifest folder), in the order of their markers:
    /// one, or several.
    pub clips: Vec<PathBuf>,
    /// The conversation; assistant turns are what training learns.
    pub messages: Vec<Message>,
    /// Where the example comes from, `manifest.jsonl:LINE`.
    pub origin: String,
}

impl Record {
    /// Why a model that takes at most `max_clips` clips cannot take this example, if it cannot
    /// (training and evaluation refuse it, naming [`Self::origin`]).
    pub fn too_many_clips(&self, max_clips: usize) -> Option<String> {
        (self.clips.len() > max_clips).then(|| {
            format!(
                "{} clips; the model takes at most {max_clips} (max_clips in its config)",
                self.clips.len()
            )
        })
    }
}

/// A manifest problem, always with file and line.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest itself could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Manifest path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is not a valid example.
    #[error("{path}:{line}: {message}")]
    Line {
        /// Manifest path.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No usable example at all.
    #[error("{0}: no examples")]
    Empty(PathBuf),
}

/// `"audio"`: one file, or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audio {
    One(String),
    Several(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Chat {
        audio: Audio,
        messages: Vec<Message>,
    },
    Instruction {
        audio_id: String,
        instruction: String,
        output: String,
    },
}

/// A loaded manifest: the good records and the problems of skipped lines.
#[derive(Debug)]
pub struct Manifest {
    /// Usable examples, in file order.
    pub records: Vec<Record>,
    /// Lines skipped with `skip_bad` (their errors).
    pub skipped: Vec<ManifestError>,
}

fn parse_line(text: &str, base: &Path) -> Result<(Vec<PathBuf>, Vec<Message>), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| {
        // serde's untagged error says little: tell which fields are expected.
        match serde_json::from_str::<serde_json::Value>(text) {
            Err(json) => format!("invalid JSON: {json}"),
            Ok(serde_json::Value::Object(_)) => format!(
                "expected {{\"audio\" (a file or a list), \"messages\": [{{\"role\", \"content\"}}]}} or {{\"audio_id\", \"instruction\", \"output\"}} ({e})"
            ),
            Ok(_) => "a line must be a JSON object".to_string(),
        }
    })?;
    let (audio, messages) = match line {
        Line::Chat {
            audio: Audio::One(file),
            messages,
        } => (vec![file], messages),
        Line::Chat {
            audio: Audio::Several(files),
            messages,
        } => (files, messages),
        Line::Instruction {
            audio_id,
            instruction,
            output,
        } => (
            vec![audio_id],
            vec![
                Message {
                    role: "user".into(),
                    content: instruction,
                },
                Message {
                    role: "assistant".into(),
                    content: output,
                },
            ],
        ),
    };
    if messages.is_empty() {
        return Err("\"messages\" is empty".into());
    }
    if let Some(m) = messages
        .iter()
        .find(|m| !["system", "user", "assistant"].contains(&m.role.as_str()))
    {
        return Err(format!(
            "unknown role \"{}\" (system, user, assistant)",
            m.role
        ));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message: nothing to learn or to compare against".into());
    }
    if audio.is_empty() {
        return Err("\"audio\" is an empty list".into());
    }
    let markers: usize = messages
        .iter()
        .map(|m| m.content.matches(AUDIO_MARKER).count())
        .sum();
    if (markers > 1 || audio.len() > 1) && markers != audio.len() {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        return Err(format!(
            "{} but {} in the messages: mark where each clip goes, in order",
            plural(audio.len(), "clip"),
            plural(markers, &format!("{AUDIO_MARKER} marker"))
        ));
    }
    let mut clips = vec![];
    for file in audio {
        let path = base.join(&file);
        if !path.is_file() {
            return Err(format!("audio file {} does not exist", path.display()));
        }
        clips.push(path);
    }
    Ok((clips, messages))
}

/// Reads a manifest. Without `skip_bad`, the first bad line is an error.
pub fn load_manifest(path: &Path, skip_bad: bool) -> Result<Manifest, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut records = vec![];
    let mut skipped = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, base) {
            Ok((clips, messages)) => records.push(Record {
                clips,
                messages,
                origin: format!("{}:{}", path.display(), i + 1),
            }),
            Err(message) => {
                let err = ManifestError::Line {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message,
                };
                if skip_bad {
                    skipped.push(err);
                } else {
                    return Err(err);
                }
            }
        }
    }
    if records.is_empty() {
        return Err(ManifestError::Empty(path.to_path_buf()));
    }
    Ok(Manifest { records, skipped })
}
