//! `pal data long` on a small shared folder made here: every recording has its length, holds
//! only clips of its own split, and its answer says what was placed in it (the first-heard
//! answer is when the asked-about sound starts); the same seed gives the same bytes; a recording
//! too short for its clips is an error naming the file.

use std::collections::BTreeSet;
use std::path::Path;

use pal_data::long_form::{
    build_long_form, count_question, first_heard_question, LongFormOptions, DIGITS_QUESTION,
};

mod common;

use common::{lines, shared, RATE};

fn options(root: &Path, out: &Path) -> LongFormOptions {
    LongFormOptions {
        root: root.to_path_buf(),
        out: out.to_path_buf(),
        seed: 3,
        train_seconds: vec![8.0],
        held_out_seconds: vec![8.0, 20.0],
        train_per_length: 4,
        held_out_per_length: 3,
    }
}

#[test]
fn recordings_have_their_length_their_splits_clips_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("shared"), dir.path().join("long"));
    shared(&root);
    build_long_form(&options(&root, &out)).unwrap();
    for split in ["train", "validation", "test"] {
        let digits = lines(&out.join(format!("digit-strings/{split}.jsonl")));
        assert_eq!(digits.len(), if split == "train" { 4 } else { 6 });
        for item in &digits {
            assert_eq!(item["messages"][0]["content"], DIGITS_QUESTION);
            let answer = item["messages"][1]["content"].as_str().unwrap();
            let words: Vec<&str> = answer.split(' ').collect();
            assert!((3..=8).contains(&words.len()), "{answer}");
            // Test recordings hold only test takes (here: every digit's takes 0-1).
            assert!(words.iter().all(|w| ["zero", "one", "two"].contains(w)));
            let audio = pal_audio::load_audio(Path::new(item["audio"].as_str().unwrap())).unwrap();
            let seconds = audio.samples.len() as f32 / RATE as f32;
            assert!(seconds == 8.0 || seconds == 20.0, "{seconds} s");
        }
        let counts = lines(&out.join(format!("sound-counts/{split}.jsonl")));
        for item in &counts {
            let question = item["messages"][0]["content"].as_str().unwrap();
            assert!(
                [count_question("dog"), count_question("rooster")].contains(&question.to_string()),
                "{question}"
            );
            let answer = item["messages"][1]["content"].as_str().unwrap();
            assert!(
                ["one", "two", "three", "four"].contains(&answer),
                "{answer}"
            );
        }
    }
    // Held-out splits also come per length, for accuracy by length.
    assert_eq!(lines(&out.join("digit-strings/test-20s.jsonl")).len(), 3);
    assert_eq!(
        lines(&out.join("sound-counts/validation-8s.jsonl")).len(),
        3
    );
}

#[test]
fn held_out_recordings_hold_held_out_clips_only() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("shared"), dir.path().join("long"));
    shared(&root);
    build_long_form(&options(&root, &out)).unwrap();
    // Each FSDD clip is a tone of its own pitch: the test recordings' loudest pitches are those
    // of test takes (0-1), never a train take's.
    let test_pitches: BTreeSet<u32> = (0..3)
        .flat_map(|d| (0..2).map(move |t| 300 + 200 * d + 20 * t))
        .collect();
    for item in lines(&out.join("digit-strings/test.jsonl")) {
        let audio = pal_audio::load_audio(Path::new(item["audio"].as_str().unwrap())).unwrap();
        let pitches: Vec<u32> = loud_runs(&audio.samples).iter().map(|r| r.1).collect();
        let placed = item["messages"][1]["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .count();
        assert_eq!(pitches.len(), placed, "one tone found per digit placed");
        for pitch in pitches {
            assert!(
                test_pitches
                    .iter()
                    .any(|&p| (p as i64 - pitch as i64).abs() <= 6),
                "a {pitch} Hz clip in a test recording"
            );
        }
    }
}

#[test]
fn first_heard_answers_are_when_the_sound_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("shared"), dir.path().join("long"));
    shared(&root);
    build_long_form(&options(&root, &out)).unwrap();
    let mut seen = 0;
    for split in ["train", "validation", "test"] {
        for item in lines(&out.join(format!("first-heard/{split}.jsonl"))) {
            let question = item["messages"][0]["content"].as_str().unwrap();
            let answer = item["messages"][1]["content"].as_str().unwrap();
            // The fake ESC-10 dogs are 600-640 Hz tones, the roosters 800-840 Hz, sounding from
            // their first sample.
            let (lo, hi) = match question {
                q if q == first_heard_question("dog") => (590, 650),
                q if q == first_heard_question("rooster") => (790, 850),
                q => panic!("{q}"),
            };
            let audio = pal_audio::load_audio(Path::new(item["audio"].as_str().unwrap())).unwrap();
            let first = loud_runs(&audio.samples)
                .into_iter()
                .find(|r| (lo..hi).contains(&r.1))
                .expect("the asked-about sound is in the recording");
            // "at 42 seconds", "at 1 second".
            let said: f32 = answer
                .strip_prefix("at ")
                .and_then(|a| a.split(' ').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("{answer}"));
            assert!(answer.ends_with(if said == 1.0 { " second" } else { " seconds" }));
            assert!(
                (said - first.0).abs() <= 0.52,
                "{answer}: starts at {} s",
                first.0
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 4 + 6 + 6);
}

/// Each stretch louder than the noise bed (runs of loud 10 ms chunks of at least 0.2 s): where
/// it starts (seconds) and its pitch (by zero crossings, its edges left out).
fn loud_runs(x: &[f32]) -> Vec<(f32, u32)> {
    let chunk = RATE as usize / 100;
    let loud: Vec<bool> = x
        .chunks(chunk)
        .map(|c| c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32 > 0.02)
        .collect();
    let mut pitches = vec![];
    let mut start = 0;
    for end in 0..=loud.len() {
        if end < loud.len() && loud[end] {
            continue;
        }
        if end >= start + 20 {
            let inner = &x[(start + 1) * chunk..(end - 1) * chunk];
            let crossings = inner
                .windows(2)
                .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
                .count();
            let seconds = inner.len() as f32 / RATE as f32;
            let pitch = (crossings as f32 / 2.0 / seconds).round() as u32;
            pitches.push(((start * chunk) as f32 / RATE as f32, pitch));
        }
        start = end + 1;
    }
    pitches
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_a_short_recording_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shared");
    shared(&root);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    build_long_form(&options(&root, &a)).unwrap();
    build_long_form(&options(&root, &b)).unwrap();
    for file in ["digit-strings/test-8s.jsonl", "sound-counts/train.jsonl"] {
        let (x, y) = (lines(&a.join(file)), lines(&b.join(file)));
        for (p, q) in x.iter().zip(&y) {
            assert_eq!(p["messages"], q["messages"]);
            let read = |v: &serde_json::Value| std::fs::read(v["audio"].as_str().unwrap()).unwrap();
            assert_eq!(read(p), read(q));
        }
    }
    let mut short = options(&root, &dir.path().join("c"));
    short.train_seconds = vec![1.0];
    let message = build_long_form(&short).unwrap_err().to_string();
    assert!(
        message.contains("train-1s-000.wav") && message.contains("slot"),
        "{message}"
    );
}
