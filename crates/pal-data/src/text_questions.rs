//! The `text-questions` task: clips of the other tasks asked a question that is not about the
//! clip ("What is the capital of Italy?"), answered as the LLM answers it without audio. It
//! teaches an adapter that a clip must not change what the LLM says to a question the clip
//! has nothing to do with (the out-of-distribution check set asks one such question per clip:
//! [`crate::ood`]). The questions are split by their index as every generated split is
//! ([`Part::of_sum`]): no validation or test question is ever trained on, and none of the check
//! set's questions is among them.

use std::path::{Path, PathBuf};

use pal_nn::rng::SplitMix64;

use crate::instruct::{pick, Part};
use crate::shared::{err, line, write, BuildError, BuildSummary, SPLITS};

/// Questions unrelated to any clip, with a short answer. The `i`-th is in the split
/// `Part::of_sum(i)`.
pub const TEXT_QUESTIONS: [(&str, &str); 48] = [
    ("What is the capital of Italy?", "Rome."),
    ("What is three plus four?", "Seven."),
    ("Name a colour of the rainbow.", "Red."),
    ("How many days are in a week?", "Seven."),
    ("What is the capital of Japan?", "Tokyo."),
    ("What do bees make?", "Honey."),
    (
        "Say thank you in one short sentence.",
        "Thank you very much!",
    ),
    ("What is frozen water called?", "Ice."),
    ("Which planet do we live on?", "Earth."),
    ("Name a vegetable.", "A carrot."),
    ("How many legs does a spider have?", "Eight."),
    ("What is the opposite of hot?", "Cold."),
    ("What is the capital of Spain?", "Madrid."),
    ("What is ten minus six?", "Four."),
    ("Which animal is known as man's best friend?", "The dog."),
    ("What do cows drink?", "Water."),
    ("How many months are in a year?", "Twelve."),
    ("Name a season of the year.", "Summer."),
    ("What colour is grass?", "Green."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean."),
    ("What is the capital of Germany?", "Berlin."),
    (
        "Say goodbye in one short sentence.",
        "Goodbye, see you soon!",
    ),
    ("What is two times five?", "Ten."),
    (
        "Which star gives the Earth light during the day?",
        "The Sun.",
    ),
    ("What is the capital of England?", "London."),
    ("Name a musical instrument with strings.", "The guitar."),
    ("How many hours are in a day?", "Twenty-four."),
    ("What do plants need from the sun?", "Light."),
    ("What is the opposite of up?", "Down."),
    ("Name a bird.", "A robin."),
    ("What is nine plus one?", "Ten."),
    ("What do we call a baby cat?", "A kitten."),
    ("What is the capital of Canada?", "Ottawa."),
    ("Which month comes after January?", "February."),
    ("What colour is snow?", "White."),
    ("Name a tool for writing.", "A pencil."),
    ("How many wheels does a bicycle have?", "Two."),
    ("What is the opposite of big?", "Small."),
    ("What is the capital of Egypt?", "Cairo."),
    ("Which day comes after Monday?", "Tuesday."),
    ("What do fish live in?", "Water."),
    (
        "Say hi to a friend in one short sentence.",
        "Hi, how are you?",
    ),
    ("What is five plus five?", "Ten."),
    ("Name a shape with three sides.", "A triangle."),
    ("What is the capital of Russia?", "Moscow."),
    ("What colour is a banana?", "Yellow."),
    ("How many minutes are in an hour?", "Sixty."),
    ("Name something you wear on your feet.", "Shoes."),
];

/// The tasks whose clips are asked the questions (each clip once, in its own split).
const CLIP_TASKS: [&str; 10] = [
    "fsdd",
    "esc10",
    "speech",
    "espeak",
    "beeps",
    "noise",
    "chords",
    "instruments",
    "languages",
    "unknown",
];

/// The audio paths of `out/TASK/SPLIT.jsonl` (a task not built is skipped), each once.
pub(crate) fn clips_of(
    out: &Path,
    split: &str,
    tasks: &[&str],
) -> Result<Vec<PathBuf>, BuildError> {
    let mut clips: Vec<PathBuf> = vec![];
    for task in tasks {
        let manifest = out.join(format!("{task}/{split}.jsonl"));
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        for (i, l) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| err(&manifest, format!("line {}: {e}", i + 1)))?;
            let audio = v["audio"]
                .as_str()
                .ok_or_else(|| err(&manifest, format!("line {}: no \"audio\" path", i + 1)))?;
            let audio = PathBuf::from(audio);
            if !clips.contains(&audio) {
                clips.push(audio);
            }
        }
    }
    Ok(clips)
}

/// Writes `out/text-questions/{train,validation,test}.jsonl` from the clips of the tasks already
/// written under `out`: each clip asked one of its split's questions, drawn from `seed`.
pub(crate) fn build_text_questions(
    out: &Path,
    seed: u64,
    summary: &mut BuildSummary,
) -> Result<(), BuildError> {
    for (s, split) in SPLITS.iter().enumerate() {
        let part = Part::of_split(split);
        let questions: Vec<(&str, &str)> = TEXT_QUESTIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| Part::of_sum(*i) == part)
            .map(|(_, q)| *q)
            .collect();
        let clips = clips_of(out, split, &CLIP_TASKS)?;
        if clips.is_empty() {
            continue;
        }
        let mut rng = SplitMix64::new(seed ^ (0x7e47 + s as u64));
        let lines: Vec<String> = clips
            .iter()
            .map(|clip| {
                let (question, answer) = questions[pick(&mut rng, questions.len())];
                line(clip, question, answer)
            })
            .collect();
        write(
            &out.join(format!("text-questions/{split}.jsonl")),
            &lines,
            summary,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_split_has_questions_and_none_is_in_two_or_in_the_check_set() {
        let mut seen = std::collections::BTreeSet::new();
        for (q, _) in TEXT_QUESTIONS {
            assert!(seen.insert(q), "'{q}' is listed twice");
        }
        for part in [Part::Train, Part::Validation, Part::Test] {
            let n = (0..TEXT_QUESTIONS.len())
                .filter(|&i| Part::of_sum(i) == part)
                .count();
            assert!(n >= 12, "{part:?}: {n} questions");
        }
        for (q, _) in crate::ood::UNRELATED
            .iter()
            .chain(crate::ood::UNRELATED_VALIDATION.iter())
        {
            assert!(
                !seen.contains(q),
                "the check set asks '{q}', a text question"
            );
        }
    }
}
