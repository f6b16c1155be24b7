//! FSDD held out by speaker: each rotation tests on every clip of one speaker and trains and
//! validates on the others only, never on an official test take.

use std::collections::BTreeSet;
use std::path::Path;

use pal_data::shared::build_fsdd_speaker_splits;

mod common;

const SPEAKERS: [&str; 3] = ["ann", "bob", "cy"];
const TAKES: usize = 12;

/// A `fsdd/labels.csv` of three speakers, digits 0-1, takes 0-11 (0-4 official test).
fn fake_fsdd(root: &Path) {
    let mut labels = String::from("path,digit,word,speaker,index,split\n");
    for speaker in SPEAKERS {
        for digit in 0..2 {
            for take in 0..TAKES {
                let split = if take < 5 { "test" } else { "train" };
                let word = ["zero", "one"][digit];
                labels += &format!(
                    "recordings/{digit}_{speaker}_{take}.wav,{digit},{word},{speaker},{take},{split}\n"
                );
            }
        }
    }
    std::fs::create_dir_all(root.join("fsdd")).unwrap();
    std::fs::write(root.join("fsdd/labels.csv"), labels).unwrap();
}

/// The file names (`DIGIT_SPEAKER_TAKE.wav`) of a manifest.
fn clips(path: &Path) -> BTreeSet<String> {
    common::lines(path)
        .iter()
        .map(|v| {
            let audio = v["audio"].as_str().unwrap();
            Path::new(audio)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string()
        })
        .collect()
}

fn speaker_and_take(clip: &str) -> (String, usize) {
    let parts: Vec<&str> = clip.trim_end_matches(".wav").split('_').collect();
    (parts[1].to_string(), parts[2].parse().unwrap())
}

#[test]
fn each_rotation_tests_one_speaker_and_trains_on_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    fake_fsdd(tmp.path());
    let out = tmp.path().join("data");
    let summary = build_fsdd_speaker_splits(tmp.path(), &out).unwrap();
    assert_eq!(summary.manifests.len(), 3 * SPEAKERS.len());
    for held_out in SPEAKERS {
        let dir = out.join("fsdd-speakers").join(held_out);
        let (train, validation, test) = (
            clips(&dir.join("train.jsonl")),
            clips(&dir.join("validation.jsonl")),
            clips(&dir.join("test.jsonl")),
        );
        // Every clip of the held-out speaker, official test takes included, and nothing else.
        assert_eq!(test.len(), 2 * TAKES, "{held_out}");
        assert!(test.iter().all(|c| speaker_and_take(c).0 == held_out));
        // The others: takes 10-11 train, 5-9 validate; their official test takes nowhere.
        for (split, clips, takes) in [
            ("train", &train, 10..12),
            ("validation", &validation, 5..10),
        ] {
            assert_eq!(clips.len(), 2 * 2 * takes.len(), "{held_out} {split}");
            for clip in clips {
                let (speaker, take) = speaker_and_take(clip);
                assert_ne!(speaker, held_out, "{held_out} {split} holds {clip}");
                assert!(takes.contains(&take), "{held_out} {split} holds {clip}");
            }
        }
    }
}
