//! The out-of-distribution check set (`pal data ood`): clips unlike the instruction set's, each
//! asked four questions, to measure whether a model's answers stay language
//! (`pal eval --manifest data/ood/test.jsonl` reports the share of well-formed answers). The
//! clips: real speech (JFK and Beckett, and the two joined and repeated to 60 and 120 s), long
//! espeak-ng passages (about 10, 30 and 60 s, in the held-out test voice and sentences), generated
//! melodies and chord progressions, coloured noise, silence and near-silence, and ESC-10 sounds
//! joined or looped; 1 to 120 s. Its validation twin (`validation.jsonl`), for choices, has the
//! same kinds from other sources: the ALSA clips and FSDD takes that validate, the validation
//! voice and sentences, other lengths, other ESC-10 recordings, other unrelated questions. No
//! clip is built from audio any training split reads (JFK and Beckett are held out of every
//! training split; ESC-10 sources of both `esc10` and `esc10-probe`), and
//! `test-sources.txt` and `validation-sources.txt` list the real files each part reads. The
//! questions: "What sound is this?", "Describe the sound.", "What is said?" and one unrelated to
//! audio. Everything is drawn from one seed. The references are what a good answer would say;
//! only well-formedness is the point here, accuracy on this set means little.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};

use pal_nn::rng::SplitMix64;

use crate::instruct::{
    chord, coloured_noise, espeak, espeak_available, noise_sample, pick, sentence, uniform, Part,
    RATE, TEST_VOICE, VALIDATION_VOICE,
};
use crate::shared::{
    alsa_speech_by_split, err, esc10_rows, fsdd_clips_by_split, line, write, BuildError,
    BuildSummary, Esc10Sources, DESCRIBE_QUESTION, REAL_SPEECH, SOUND_QUESTION, SPEECH_QUESTION,
};

/// Questions unrelated to the clip, with a reference answer; one is drawn per clip.
pub(crate) const UNRELATED: [(&str, &str); 4] = [
    ("What is the capital of France?", "Paris"),
    ("Say hello in one short sentence.", "Hello!"),
    ("What colour is the sky on a clear day?", "Blue"),
    ("Name one fruit.", "An apple"),
];

/// The validation twin's unrelated questions: others than the test set's.
pub(crate) const UNRELATED_VALIDATION: [(&str, &str); 4] = [
    ("What is two plus two?", "Four"),
    ("Name an animal that can fly.", "A bird"),
    ("What do people drink when they are thirsty?", "Water"),
    ("Say good morning.", "Good morning!"),
];

/// The longest clip: pal's Whisper models read at most four 30 s windows.
const MAX_SECONDS: f32 = 120.0;

/// One clip of the set: its samples and what a good answer to each audio question says.
struct Clip {
    name: String,
    samples: Vec<f32>,
    sound: String,
    description: String,
    said: String,
}

impl Clip {
    fn new(name: &str, samples: Vec<f32>, sound: &str, description: &str, said: &str) -> Self {
        let mut samples = samples;
        samples.truncate((MAX_SECONDS * RATE as f32) as usize);
        Self {
            name: name.to_string(),
            samples,
            sound: sound.to_string(),
            description: description.to_string(),
            said: said.to_string(),
        }
    }
}

/// `samples` repeated until `seconds` long.
fn looped(samples: &[f32], seconds: f32) -> Vec<f32> {
    let n = (seconds * RATE as f32) as usize;
    samples.iter().copied().cycle().take(n).collect()
}

/// A 16 kHz mono clip from a file of the shared data.
fn read_clip(path: &Path) -> Result<Vec<f32>, BuildError> {
    // pal_audio's errors name the file already.
    let failed = |e: pal_audio::AudioError| BuildError {
        path: path.to_path_buf(),
        message: e
            .to_string()
            .replacen(&format!("{}: ", path.display()), "", 1),
    };
    let audio = pal_audio::load_audio(path).map_err(failed)?;
    Ok(audio
        .to_16k(&path.display().to_string())
        .map_err(failed)?
        .samples)
}

/// A melody of `seconds`: notes of a pentatonic scale with a plucked envelope.
fn melody(rng: &mut SplitMix64, seconds: f32) -> Vec<f32> {
    const SCALE: [f32; 5] = [0.0, 2.0, 4.0, 7.0, 9.0];
    let root = uniform(rng, 200.0, 330.0);
    let mut out = Vec::with_capacity((seconds * RATE as f32) as usize);
    while (out.len() as f32) < seconds * RATE as f32 {
        let step = SCALE[pick(rng, 5)] + 12.0 * pick(rng, 2) as f32;
        let hz = root * 2f32.powf(step / 12.0);
        let length = [0.2f32, 0.3, 0.45][pick(rng, 3)];
        for i in 0..(length * RATE as f32) as usize {
            let t = i as f32 / RATE as f32;
            let env = (-4.0 * t).exp() * (t * 300.0).min(1.0);
            let tone = (2.0 * PI * hz * t).sin() + 0.4 * (4.0 * PI * hz * t).sin();
            out.push(0.25 * env * tone);
        }
    }
    out
}

/// The lengths of one part's generated clips: the validation twin's differ from the test set's,
/// so that no generated clip is in both.
struct Lengths {
    melodies: [f32; 2],
    chords: f32,
    /// (colour: 0 white, 1 pink, 2 brown; seconds; name)
    noises: [(usize, f32, &'static str); 3],
    silences: [f32; 2],
    near_silence: f32,
}

const TEST_LENGTHS: Lengths = Lengths {
    melodies: [8.0, 40.0],
    chords: 20.0,
    noises: [(0, 3.0, "white"), (1, 30.0, "pink"), (2, 90.0, "brown")],
    silences: [1.0, 10.0],
    near_silence: MAX_SECONDS,
};

const VALIDATION_LENGTHS: Lengths = Lengths {
    melodies: [15.0, 60.0],
    chords: 10.0,
    noises: [(0, 30.0, "white"), (1, 90.0, "pink"), (2, 3.0, "brown")],
    silences: [3.0, 30.0],
    near_silence: 60.0,
};

const SPEAKING: &str = "someone speaking";
const A_VOICE: &str = "a person speaking";
const NOTHING: &str = "nothing is said";

/// The test set's real speech: JFK and Beckett, alone, joined, and repeated to 60 and 120 s.
fn real_speech_test(
    root: &Path,
    read_source: &mut impl FnMut(PathBuf) -> Result<Vec<f32>, BuildError>,
) -> Result<Vec<Clip>, BuildError> {
    let speech = root.join("speech_samples");
    let [(jfk_file, jfk_text), (beckett_file, beckett_text)] = REAL_SPEECH;
    let jfk = read_source(speech.join(jfk_file))?;
    let beckett = read_source(speech.join(beckett_file))?;
    let both: Vec<f32> = jfk.iter().chain(&beckett).copied().collect();
    Ok(vec![
        Clip::new("speech-jfk", jfk, SPEAKING, A_VOICE, jfk_text),
        Clip::new("speech-beckett", beckett, SPEAKING, A_VOICE, beckett_text),
        Clip::new(
            "speech-jfk-beckett",
            both.clone(),
            SPEAKING,
            A_VOICE,
            &format!("{jfk_text} {beckett_text}"),
        ),
        Clip::new(
            "speech-60s",
            looped(&both, 60.0),
            SPEAKING,
            A_VOICE,
            jfk_text,
        ),
        Clip::new(
            "speech-120s",
            looped(&both, 120.0),
            SPEAKING,
            A_VOICE,
            jfk_text,
        ),
    ])
}

/// The validation twin's real speech: the ALSA channel names the `speech` task validates on,
/// joined, and FSDD's validation takes strung into 10, 60 and 120 s of digits (speakers drawn
/// from `rng`, a short pause between digits).
fn real_speech_validation(
    rng: &mut SplitMix64,
    root: &Path,
    read_source: &mut impl FnMut(PathBuf) -> Result<Vec<f32>, BuildError>,
) -> Result<Vec<Clip>, BuildError> {
    let mut out = vec![];
    let alsa = alsa_speech_by_split(root)?;
    let (mut joined, mut said) = (vec![], vec![]);
    for clip in alsa.get("validation").into_iter().flatten() {
        joined.extend(read_source(clip.path.clone())?);
        said.push(clip.label.clone());
    }
    if !joined.is_empty() {
        out.push(Clip::new(
            "speech-alsa",
            joined,
            SPEAKING,
            A_VOICE,
            &said.join(" "),
        ));
    }
    let fsdd = fsdd_clips_by_split(root)?;
    let takes = &fsdd["validation"];
    for seconds in [10.0f32, 60.0, 120.0] {
        let (mut samples, mut words) = (vec![], vec![]);
        while (samples.len() as f32) < (seconds - 1.5) * RATE as f32 {
            let clip = &takes[pick(rng, takes.len())];
            samples.extend(read_source(clip.path.clone())?);
            samples.extend(std::iter::repeat_n(0.0, RATE as usize * 3 / 10));
            words.push(clip.label.clone());
        }
        out.push(Clip::new(
            &format!("speech-digits-{seconds}s"),
            samples,
            SPEAKING,
            A_VOICE,
            &words.join(" "),
        ));
    }
    Ok(out)
}

/// The clips of one part of the set (`Part::Test`: the check set; `Part::Validation`: its
/// twin), drawn from `rng`; `root` is the shared data folder. The real files read are added to
/// `sources`; ESC-10 files in `avoid` (the other part's) are not drawn.
fn clips(
    part: Part,
    rng: &mut SplitMix64,
    root: &Path,
    audio_dir: &Path,
    avoid: &[PathBuf],
    sources: &mut Vec<PathBuf>,
) -> Result<Vec<Clip>, BuildError> {
    if !root.join("speech_samples").is_dir() {
        return Err(err(
            root,
            "no speech_samples/ folder: --root is the shared data folder (speech_samples/, esc10/, fsdd/)",
        ));
    }
    let mut read_source = |path: PathBuf| {
        let samples = read_clip(&path);
        sources.push(path);
        samples
    };
    let (mut out, lengths, voice) = match part {
        Part::Validation => (
            real_speech_validation(rng, root, &mut read_source)?,
            &VALIDATION_LENGTHS,
            VALIDATION_VOICE,
        ),
        _ => (
            real_speech_test(root, &mut read_source)?,
            &TEST_LENGTHS,
            TEST_VOICE,
        ),
    };

    // Long espeak-ng passages in the voice and sentences the instruction set holds out for this
    // part.
    if espeak_available() {
        for sentences in [4, 12, 24] {
            let text: Vec<String> = (0..sentences).map(|_| sentence(rng, part)).collect();
            let text = text.join(" ");
            // espeak-ng writes 22.05 kHz; the set keeps the 16 kHz copy only.
            let path = audio_dir.join(format!("espeak-{sentences}.espeak-ng.wav"));
            espeak(&text, voice, 150, &path)?;
            let samples = read_clip(&path)?;
            std::fs::remove_file(&path).map_err(|e| err(&path, e))?;
            out.push(Clip::new(
                &format!("espeak-{sentences}-sentences"),
                samples,
                SPEAKING,
                A_VOICE,
                &text,
            ));
        }
    } else {
        eprintln!("warning: espeak-ng is not installed; the long espeak passages are skipped");
    }

    // Music.
    let tune = "a melody played on a synthesizer";
    for seconds in lengths.melodies {
        out.push(Clip::new(
            &format!("music-melody-{seconds}s"),
            melody(rng, seconds),
            "music",
            tune,
            NOTHING,
        ));
    }
    let mut progression = vec![];
    while (progression.len() as f32) < lengths.chords * RATE as f32 {
        let root = uniform(rng, 180.0, 440.0);
        let minor = rng.next_f64() < 0.5;
        progression.extend(chord(rng, minor, root));
    }
    out.push(Clip::new(
        &format!("music-chords-{}s", lengths.chords),
        progression,
        "music",
        "a sequence of chords",
        NOTHING,
    ));

    // Noise, silence, near-silence.
    for (colour, seconds, name) in lengths.noises {
        out.push(Clip::new(
            &format!("noise-{name}-{seconds}s"),
            coloured_noise(rng, colour, seconds),
            &format!("{name} noise"),
            &format!("a steady hiss of {name} noise"),
            NOTHING,
        ));
    }
    for seconds in lengths.silences {
        out.push(Clip::new(
            &format!("silence-{seconds}s"),
            vec![0.0; (seconds * RATE as f32) as usize],
            "silence",
            "nothing can be heard",
            NOTHING,
        ));
    }
    let hum: Vec<f32> = (0..(lengths.near_silence * RATE as f32) as usize)
        .map(|_| 0.003 * noise_sample(rng))
        .collect();
    out.push(Clip::new(
        &format!("near-silence-{}s", lengths.near_silence),
        hum,
        "silence",
        "a very quiet background hiss",
        NOTHING,
    ));

    // ESC-10 sounds, joined and looped (5 s clips in the data), from sources that every ESC-10
    // task holds out of training, and that the other part did not draw.
    let esc = root.join("esc10");
    let all = esc10_rows(root)?;
    let split = Esc10Sources::new(&all);
    let path_of = |r: &std::collections::BTreeMap<String, String>| {
        esc.join(r.get("path").map(String::as_str).unwrap_or_default())
    };
    let rows: Vec<_> = all
        .iter()
        .filter(|r| split.split(r) != "train" && split.probe_split(r) != "train")
        .filter(|r| !avoid.contains(&path_of(r)))
        .collect();
    if rows.len() >= 2 {
        let a = rows[pick(rng, rows.len())];
        let b = rows[pick(rng, rows.len())];
        let (ca, cb) = (
            a["category"].replace('_', " "),
            b["category"].replace('_', " "),
        );
        let joined: Vec<f32> = read_source(path_of(a))?
            .into_iter()
            .chain(read_source(path_of(b))?)
            .collect();
        out.push(Clip::new(
            "esc10-two-sounds",
            joined,
            &format!("{ca}, then {cb}"),
            &format!("{ca}, then {cb}"),
            NOTHING,
        ));
        out.push(Clip::new(
            "esc10-looped-30s",
            looped(&read_source(path_of(a))?, 30.0),
            &ca,
            &format!("{ca}, again and again"),
            NOTHING,
        ));
    }
    Ok(out)
}

/// Builds the check set (`out/test.jsonl`, clips under `out/audio/`) and its validation twin
/// (`out/validation.jsonl`, clips under `out/audio/validation/`) from the shared data at `root`,
/// and lists each part's real source files in `out/test-sources.txt` and
/// `out/validation-sources.txt`.
pub fn build_ood_set(root: &Path, out: &Path, seed: u64) -> Result<BuildSummary, BuildError> {
    std::fs::create_dir_all(out).map_err(|e| err(out, e))?;
    let out = out.canonicalize().map_err(|e| err(out, e))?;
    let mut summary = BuildSummary::default();
    let test_sources = build_part(Part::Test, root, &out, seed, &[], &mut summary)?;
    build_part(
        Part::Validation,
        root,
        &out,
        seed,
        &test_sources,
        &mut summary,
    )?;
    Ok(summary)
}

/// Writes one part of the set; returns the real files it read.
fn build_part(
    part: Part,
    root: &Path,
    out: &Path,
    seed: u64,
    avoid: &[PathBuf],
    summary: &mut BuildSummary,
) -> Result<Vec<PathBuf>, BuildError> {
    let (name, audio_dir, mut rng, unrelated) = match part {
        Part::Validation => (
            "validation",
            out.join("audio/validation"),
            SplitMix64::new(seed ^ 0x7a11d),
            &UNRELATED_VALIDATION,
        ),
        _ => (
            "test",
            out.join("audio"),
            SplitMix64::new(seed ^ 0x00d5e7),
            &UNRELATED,
        ),
    };
    std::fs::create_dir_all(&audio_dir).map_err(|e| err(&audio_dir, e))?;
    let mut lines = vec![];
    let mut sources = vec![];
    for clip in clips(part, &mut rng, root, &audio_dir, avoid, &mut sources)? {
        let path = audio_dir.join(format!("{}.wav", clip.name));
        pal_audio::write_wav(&path, &clip.samples, RATE).map_err(|e| err(&path, e))?;
        let (unrelated, reference) = unrelated[pick(&mut rng, unrelated.len())];
        for (question, answer) in [
            (SOUND_QUESTION, clip.sound.as_str()),
            (DESCRIBE_QUESTION, clip.description.as_str()),
            (SPEECH_QUESTION, clip.said.as_str()),
            (unrelated, reference),
        ] {
            lines.push(line(&path, question, answer));
        }
    }
    write(&out.join(format!("{name}.jsonl")), &lines, summary)?;
    sources.sort();
    sources.dedup();
    let listed: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    let list = out.join(format!("{name}-sources.txt"));
    std::fs::write(&list, listed.join("\n") + "\n").map_err(|e| err(&list, e))?;
    Ok(sources)
}
