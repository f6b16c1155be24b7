//! The `text-questions` task (`pal data text-questions`): clips of the other tasks asked a
//! question that is not about the clip ("What is the capital of Italy?"), answered as the frozen
//! LLM answers it without audio (the reference is the LLM's own greedy answer, given by the
//! caller). Scored by exact agreement, it measures whether a clip changes what the LLM says to a
//! question the clip has nothing to do with; trained on, it asks an adapter to leave such
//! answers alone (the out-of-distribution check set asks one such question per clip:
//! [`crate::ood`]). The questions are split by their index as every generated split is
//! ([`Part::of_sum`]): no validation or test question is ever trained on, and none of the check
//! set's questions is among them.

use std::path::Path;

use pal_nn::rng::SplitMix64;

use crate::instruct::{pick, Part};
use crate::shared::{clips_of, err, line, write, BuildError, BuildSummary, SPLITS};

/// Questions unrelated to any clip. The `i`-th is in the split `Part::of_sum(i)`.
pub const TEXT_QUESTIONS: [&str; 48] = [
    "What is the capital of Italy?",
    "What is three plus four?",
    "Name a colour of the rainbow.",
    "How many days are in a week?",
    "What is the capital of Japan?",
    "What do bees make?",
    "Say thank you in one short sentence.",
    "What is frozen water called?",
    "Which planet do we live on?",
    "Name a vegetable.",
    "How many legs does a spider have?",
    "What is the opposite of hot?",
    "What is the capital of Spain?",
    "What is ten minus six?",
    "Which animal is known as man's best friend?",
    "What do cows drink?",
    "How many months are in a year?",
    "Name a season of the year.",
    "What colour is grass?",
    "What is the largest ocean on Earth?",
    "What is the capital of Germany?",
    "Say goodbye in one short sentence.",
    "What is two times five?",
    "Which star gives the Earth light during the day?",
    "What is the capital of England?",
    "Name a musical instrument with strings.",
    "How many hours are in a day?",
    "What do plants need from the sun?",
    "What is the opposite of up?",
    "Name a bird.",
    "What is nine plus one?",
    "What do we call a baby cat?",
    "What is the capital of Canada?",
    "Which month comes after January?",
    "What colour is snow?",
    "Name a tool for writing.",
    "How many wheels does a bicycle have?",
    "What is the opposite of big?",
    "What is the capital of Egypt?",
    "Which day comes after Monday?",
    "What do fish live in?",
    "Say hi to a friend in one short sentence.",
    "What is five plus five?",
    "Name a shape with three sides.",
    "What is the capital of Russia?",
    "What colour is a banana?",
    "How many minutes are in an hour?",
    "Name something you wear on your feet.",
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

/// What [`build_text_questions`] wrote, and the questions it left out because the LLM's answer
/// did not end within its token limit (a reference that runs on teaches running on).
pub struct TextQuestionsSummary {
    /// The manifests written.
    pub summary: BuildSummary,
    /// Questions left out.
    pub left_out: Vec<&'static str>,
}

/// Writes `instruct/text-questions/{train,validation,test}.jsonl` from the clips of the tasks
/// already written under `instruct` (`pal data instruct`): each clip asked one of its split's
/// questions, drawn from `seed`, with the LLM's own answer as the reference. `answers` gets every
/// question at once and returns, for each, the LLM's answer without audio, or `None` where it did
/// not end (that question is left out).
pub fn build_text_questions(
    instruct: &Path,
    seed: u64,
    answers: impl FnOnce(&[&str]) -> Result<Vec<Option<String>>, BuildError>,
) -> Result<TextQuestionsSummary, BuildError> {
    let answered = answers(&TEXT_QUESTIONS)?;
    if answered.len() != TEXT_QUESTIONS.len() {
        return Err(err(
            instruct,
            format!(
                "{} answers to {} questions",
                answered.len(),
                TEXT_QUESTIONS.len()
            ),
        ));
    }
    let mut summary = BuildSummary::default();
    let mut left_out = vec![];
    for (s, split) in SPLITS.iter().enumerate() {
        let part = Part::of_split(split);
        let mut questions: Vec<(&str, &str)> = vec![];
        for (i, question) in TEXT_QUESTIONS.iter().enumerate() {
            if Part::of_sum(i) != part {
                continue;
            }
            match &answered[i] {
                Some(answer) if !answer.trim().is_empty() => {
                    questions.push((question, answer.trim()))
                }
                _ => left_out.push(*question),
            }
        }
        let clips = clips_of(instruct, split, &CLIP_TASKS)?;
        if clips.is_empty() {
            return Err(err(
                instruct,
                format!(
                    "no {split} clips: build the instruction set here first (pal data instruct)"
                ),
            ));
        }
        if questions.is_empty() {
            return Err(err(
                instruct,
                format!("no {split} question has an answer that ends"),
            ));
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
            &instruct.join(format!("text-questions/{split}.jsonl")),
            &lines,
            &mut summary,
        )?;
    }
    Ok(TextQuestionsSummary { summary, left_out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_split_has_questions_and_none_is_in_two_or_in_the_check_set() {
        let mut seen = std::collections::BTreeSet::new();
        for q in TEXT_QUESTIONS {
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

    #[test]
    fn references_are_the_answers_given_and_questions_stay_in_their_split() {
        let tmp = tempfile::tempdir().unwrap();
        for split in SPLITS {
            let lines: Vec<String> = (0..20)
                .map(|i| line(&tmp.path().join(format!("{split}-{i}.wav")), "q", "a"))
                .collect();
            std::fs::create_dir_all(tmp.path().join("esc10")).unwrap();
            std::fs::write(
                tmp.path().join(format!("esc10/{split}.jsonl")),
                lines.join("\n"),
            )
            .unwrap();
        }
        // The LLM's answer is the question's index; the first question's does not end.
        let built = build_text_questions(tmp.path(), 0, |questions| {
            Ok((0..questions.len())
                .map(|i| (i > 0).then(|| format!("answer {i}")))
                .collect())
        })
        .unwrap();
        assert_eq!(built.left_out, vec![TEXT_QUESTIONS[0]]);
        for split in SPLITS {
            let path = tmp.path().join(format!("text-questions/{split}.jsonl"));
            let text = std::fs::read_to_string(path).unwrap();
            assert_eq!(text.lines().count(), 20, "{split}: one question per clip");
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let question = v["messages"][0]["content"].as_str().unwrap();
                let i = TEXT_QUESTIONS.iter().position(|q| *q == question).unwrap();
                assert_eq!(
                    Part::of_sum(i),
                    Part::of_split(split),
                    "{question} in {split}"
                );
                assert_eq!(v["messages"][1]["content"], format!("answer {i}"));
                assert!(v["audio"].as_str().unwrap().contains(split));
            }
        }
        // Without the instruction set, a clear error naming the folder.
        let empty = tempfile::tempdir().unwrap();
        let e = build_text_questions(empty.path(), 0, |q| Ok(vec![None; q.len()]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("pal data instruct"), "{e}");
    }
}
