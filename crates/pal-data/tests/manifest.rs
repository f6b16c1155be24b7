//! Every kind of bad manifest line is an error naming the file and line, or with `skip_bad` a
//! counted warning.

use pal_data::{load_manifest, ManifestError};

fn setup(lines: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("clips")).unwrap();
    std::fs::write(dir.path().join("clips/a.wav"), b"RIFF").unwrap();
    let path = dir.path().join("train.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    (dir, path)
}

const GOOD_CHAT: &str = r#"{"audio": "clips/a.wav", "messages": [{"role": "user", "content": "Which digit?"}, {"role": "assistant", "content": "seven"}]}"#;
const GOOD_LTU: &str = r#"{"audio_id": "clips/a.wav", "instruction": "What sound is this?", "output": "A dog barks."}"#;

#[test]
fn both_layouts_load_with_paths_relative_to_the_manifest() {
    let (dir, path) = setup(&[GOOD_CHAT, "", GOOD_LTU]);
    let m = load_manifest(&path, false).unwrap();
    assert_eq!(m.records.len(), 2);
    assert_eq!(m.records[0].clips, vec![dir.path().join("clips/a.wav")]);
    assert_eq!(m.records[1].messages[0].role, "user");
    assert_eq!(m.records[1].messages[1].content, "A dog barks.");
    assert!(m.records[1].origin.ends_with("train.jsonl:3"));
}

fn line_error(bad: &str) -> String {
    let (_dir, path) = setup(&[GOOD_CHAT, bad]);
    let err = load_manifest(&path, false).unwrap_err();
    assert!(matches!(err, ManifestError::Line { line: 2, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("train.jsonl:2:"), "{msg}");
    msg
}

#[test]
fn each_bad_line_is_named() {
    assert!(line_error("{not json").contains("invalid JSON"));
    assert!(line_error(r#"{"audio": "clips/a.wav"}"#).contains("expected"));
    assert!(line_error("[1, 2]").contains("JSON object"));
    assert!(line_error(
        r#"{"audio": "clips/missing.wav", "messages": [{"role": "assistant", "content": "x"}]}"#
    )
    .contains("missing.wav"));
    assert!(line_error(
        r#"{"audio": "clips/a.wav", "messages": [{"role": "robot", "content": "x"}]}"#
    )
    .contains("robot"));
    assert!(line_error(
        r#"{"audio": "clips/a.wav", "messages": [{"role": "user", "content": "x"}]}"#
    )
    .contains("no assistant"));
    assert!(line_error(r#"{"audio": "clips/a.wav", "messages": []}"#).contains("empty"));
}

#[test]
fn an_example_about_several_clips_marks_where_each_goes() {
    let two = r#"{"audio": ["clips/a.wav", "clips/b.wav"], "messages": [{"role": "user", "content": "First: <|pal_audio|> Second: <|pal_audio|> Which has the dog?"}, {"role": "assistant", "content": "the second"}]}"#;
    let (dir, path) = setup(&[GOOD_CHAT, two]);
    std::fs::write(dir.path().join("clips/b.wav"), b"RIFF").unwrap();
    let m = load_manifest(&path, false).unwrap();
    assert_eq!(
        m.records[1].clips,
        vec![
            dir.path().join("clips/a.wav"),
            dir.path().join("clips/b.wav")
        ]
    );
    // Markers must match the clips, one each, in order.
    let unmarked = r#"{"audio": ["clips/a.wav", "clips/a.wav"], "messages": [{"role": "user", "content": "Which has the dog?"}, {"role": "assistant", "content": "the second"}]}"#;
    let msg = line_error(unmarked);
    assert!(msg.contains("2 clips but 0 <|pal_audio|> markers"), "{msg}");
    let extra = r#"{"audio": "clips/a.wav", "messages": [{"role": "user", "content": "<|pal_audio|> and <|pal_audio|>?"}, {"role": "assistant", "content": "x"}]}"#;
    assert!(line_error(extra).contains("1 clip but 2 <|pal_audio|> markers"));
    let missing = r#"{"audio": ["clips/a.wav", "clips/gone.wav"], "messages": [{"role": "user", "content": "<|pal_audio|> <|pal_audio|>"}, {"role": "assistant", "content": "x"}]}"#;
    assert!(line_error(missing).contains("gone.wav"));
    assert!(
        line_error(r#"{"audio": [], "messages": [{"role": "assistant", "content": "x"}]}"#)
            .contains("empty list")
    );
}

#[test]
fn skip_bad_keeps_good_lines_and_counts_the_rest() {
    let (_dir, path) = setup(&[
        GOOD_CHAT,
        "{oops",
        GOOD_LTU,
        r#"{"audio_id": "nope.wav", "instruction": "a", "output": "b"}"#,
    ]);
    let m = load_manifest(&path, true).unwrap();
    assert_eq!(m.records.len(), 2);
    assert_eq!(m.skipped.len(), 2);
    assert!(m.skipped[1].to_string().contains("train.jsonl:4"));
}

#[test]
fn empty_or_missing_manifest_is_an_error() {
    let (_dir, path) = setup(&["", "  "]);
    assert!(matches!(
        load_manifest(&path, false),
        Err(ManifestError::Empty(_))
    ));
    let err = load_manifest(&path.with_file_name("none.jsonl"), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("none.jsonl"), "{err}");
}

/// The generated part of the instruction set is reproducible from its seed: the same seed gives
/// byte-identical manifests and clips, another seed gives other clips; every clip decodes.
#[test]
fn instruction_set_is_reproducible_from_its_seed() {
    use pal_data::instruct::{build_instruction_set, InstructOptions};
    let build = |seed: u64| {
        let dir = tempfile::tempdir().unwrap();
        let options = InstructOptions {
            root: None,
            out: dir.path().join("out"),
            seed,
            espeak: false,
            generated_per_task: 8,
        };
        let summary = build_instruction_set(&options).unwrap();
        let mut files: Vec<(String, Vec<u8>)> = vec![];
        for (path, n) in &summary.manifests {
            assert!(*n > 0, "{} is empty", path.display());
            let text = std::fs::read_to_string(path).unwrap();
            let manifest = pal_data::load_manifest(path, false).unwrap();
            for record in &manifest.records {
                let clip = &record.clips[0];
                let audio = pal_audio::load_audio(clip).unwrap();
                assert!(audio.duration() > 0.3);
                files.push((
                    clip.file_name().unwrap().to_string_lossy().into(),
                    std::fs::read(clip).unwrap(),
                ));
            }
            // Manifests hold absolute paths into this build's folder; compare them relative.
            files.push((
                path.file_name().unwrap().to_string_lossy().into(),
                text.replace(&dir.path().display().to_string(), "")
                    .into_bytes(),
            ));
        }
        files
    };
    let a = build(7);
    assert_eq!(a, build(7));
    assert_ne!(a, build(8));
    // Both splits of every generated task exist, the test split a quarter of the train split.
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"train.jsonl") && names.contains(&"test.jsonl"));
}
