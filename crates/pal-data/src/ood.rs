//! The out-of-distribution check set (`pal data ood`): clips unlike the instruction set's, each
//! asked four questions, to measure whether a model's answers stay language
//! (`pal eval --manifest data/ood/test.jsonl` reports the share of well-formed answers). The
//! clips: real speech (JFK and Beckett, and the two joined and repeated to 60 and 120 s), long
//! espeak-ng passages (about 10, 30 and 60 s, in the held-out test voice and sentences), generated
//! melodies and chord progressions, coloured noise, silence and near-silence, and ESC-10 sounds
//! joined or looped; 1 to 120 s. No clip is built from audio any training split reads: the real
//! clips are held out of every training split (JFK and Beckett; ESC-10 sources held out of both
//! `esc10` and `esc10-probe`), and `sources.txt` beside the manifest lists them. The questions: "What sound
//! is this?", "Describe the sound.", "What is said?" and one unrelated to audio. Everything is
//! drawn from one seed. The references are what a good answer would say; only well-formedness is
//! the point here, accuracy on this set means little.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};

use pal_nn::rng::SplitMix64;

use crate::instruct::{
    chord, coloured_noise, espeak, espeak_available, noise_sample, pick, sentence, uniform, Part,
    RATE, TEST_VOICE,
};
use crate::shared::{
    err, esc10_rows, line, write, BuildError, BuildSummary, Esc10Sources, DESCRIBE_QUESTION,
    SOUND_QUESTION, SPEECH_QUESTION,
};

/// Questions unrelated to the clip, with a reference answer; one is drawn per clip.
const UNRELATED: [(&str, &str); 4] = [
    ("What is the capital of France?", "Paris"),
    ("Say hello in one short sentence.", "Hello!"),
    ("What colour is the sky on a clear day?", "Blue"),
    ("Name one fruit.", "An apple"),
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

/// The set's clips, drawn from `rng`; `root` is the shared data folder. The real files read are
/// added to `sources`.
fn clips(
    rng: &mut SplitMix64,
    root: &Path,
    audio_dir: &Path,
    sources: &mut Vec<PathBuf>,
) -> Result<Vec<Clip>, BuildError> {
    let speech = root.join("speech_samples");
    if !speech.is_dir() {
        return Err(err(
            root,
            "no speech_samples/ folder: --root is the shared data folder (speech_samples/, esc10/)",
        ));
    }
    let mut read_source = |path: PathBuf| {
        let samples = read_clip(&path);
        sources.push(path);
        samples
    };
    let jfk = read_source(speech.join("jfk_16k.wav"))?;
    let beckett = read_source(speech.join("beckett_16k.wav"))?;
    let jfk_text = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";
    let beckett_text = "Ever tried, ever failed. No matter, try again. Fail again. Fail better.";
    let both: Vec<f32> = jfk.iter().chain(&beckett).copied().collect();
    let speaking = "someone speaking";
    let a_voice = "a person speaking";
    let nothing = "nothing is said";
    let mut out = vec![
        Clip::new("speech-jfk", jfk, speaking, a_voice, jfk_text),
        Clip::new("speech-beckett", beckett, speaking, a_voice, beckett_text),
        Clip::new(
            "speech-jfk-beckett",
            both.clone(),
            speaking,
            a_voice,
            &format!("{jfk_text} {beckett_text}"),
        ),
        Clip::new(
            "speech-60s",
            looped(&both, 60.0),
            speaking,
            a_voice,
            jfk_text,
        ),
        Clip::new(
            "speech-120s",
            looped(&both, 120.0),
            speaking,
            a_voice,
            jfk_text,
        ),
    ];

    // Long espeak-ng passages in the voice and sentences the instruction set only tests on.
    if espeak_available() {
        for sentences in [4, 12, 24] {
            let text: Vec<String> = (0..sentences).map(|_| sentence(rng, Part::Test)).collect();
            let text = text.join(" ");
            // espeak-ng writes 22.05 kHz; the set keeps the 16 kHz copy only.
            let path = audio_dir.join(format!("espeak-{sentences}.espeak-ng.wav"));
            espeak(&text, TEST_VOICE, 150, &path)?;
            let samples = read_clip(&path)?;
            std::fs::remove_file(&path).map_err(|e| err(&path, e))?;
            out.push(Clip::new(
                &format!("espeak-{sentences}-sentences"),
                samples,
                speaking,
                a_voice,
                &text,
            ));
        }
    } else {
        eprintln!("warning: espeak-ng is not installed; the long espeak passages are skipped");
    }

    // Music.
    let music = "music";
    let tune = "a melody played on a synthesizer";
    out.push(Clip::new(
        "music-melody-8s",
        melody(rng, 8.0),
        music,
        tune,
        nothing,
    ));
    out.push(Clip::new(
        "music-melody-40s",
        melody(rng, 40.0),
        music,
        tune,
        nothing,
    ));
    let mut progression = vec![];
    while progression.len() < 20 * RATE as usize {
        let root = uniform(rng, 180.0, 440.0);
        let minor = rng.next_f64() < 0.5;
        progression.extend(chord(rng, minor, root));
    }
    out.push(Clip::new(
        "music-chords-20s",
        progression,
        music,
        "a sequence of chords",
        nothing,
    ));

    // Noise, silence, near-silence.
    for (colour, seconds, name) in [(0, 3.0, "white"), (1, 30.0, "pink"), (2, 90.0, "brown")] {
        out.push(Clip::new(
            &format!("noise-{name}-{seconds}s"),
            coloured_noise(rng, colour, seconds),
            &format!("{name} noise"),
            &format!("a steady hiss of {name} noise"),
            nothing,
        ));
    }
    for seconds in [1.0f32, 10.0] {
        out.push(Clip::new(
            &format!("silence-{seconds}s"),
            vec![0.0; (seconds * RATE as f32) as usize],
            "silence",
            "nothing can be heard",
            nothing,
        ));
    }
    let hum: Vec<f32> = (0..(MAX_SECONDS * RATE as f32) as usize)
        .map(|_| 0.003 * noise_sample(rng))
        .collect();
    out.push(Clip::new(
        "near-silence-120s",
        hum,
        "silence",
        "a very quiet background hiss",
        nothing,
    ));

    // ESC-10 sounds, joined and looped (5 s clips in the data), from sources that every ESC-10
    // task holds out of training.
    let esc = root.join("esc10");
    let all = esc10_rows(root)?;
    let split = Esc10Sources::new(&all);
    let rows: Vec<_> = all
        .iter()
        .filter(|r| split.split(r) != "train" && split.probe_split(r) != "train")
        .collect();
    if rows.len() >= 2 {
        let a = rows[pick(rng, rows.len())];
        let b = rows[pick(rng, rows.len())];
        let mut read = |r: &std::collections::BTreeMap<String, String>| {
            read_source(esc.join(r.get("path").map(String::as_str).unwrap_or_default()))
        };
        let (ca, cb) = (
            a["category"].replace('_', " "),
            b["category"].replace('_', " "),
        );
        let joined: Vec<f32> = read(a)?.into_iter().chain(read(b)?).collect();
        out.push(Clip::new(
            "esc10-two-sounds",
            joined,
            &format!("{ca}, then {cb}"),
            &format!("{ca}, then {cb}"),
            nothing,
        ));
        out.push(Clip::new(
            "esc10-looped-30s",
            looped(&read(a)?, 30.0),
            &ca,
            &format!("{ca}, again and again"),
            nothing,
        ));
    }
    Ok(out)
}

/// Builds `out/test.jsonl` and the clips under `out/audio/` from the shared data at `root`.
pub fn build_ood_set(root: &Path, out: &Path, seed: u64) -> Result<BuildSummary, BuildError> {
    std::fs::create_dir_all(out).map_err(|e| err(out, e))?;
    let out = out.canonicalize().map_err(|e| err(out, e))?;
    let audio_dir = out.join("audio");
    std::fs::create_dir_all(&audio_dir).map_err(|e| err(&audio_dir, e))?;
    let mut rng = SplitMix64::new(seed ^ 0x00d5e7);
    let mut lines = vec![];
    let mut sources = vec![];
    for clip in clips(&mut rng, root, &audio_dir, &mut sources)? {
        let path = audio_dir.join(format!("{}.wav", clip.name));
        pal_audio::write_wav(&path, &clip.samples, RATE).map_err(|e| err(&path, e))?;
        let (unrelated, reference) = UNRELATED[pick(&mut rng, UNRELATED.len())];
        for (question, answer) in [
            (SOUND_QUESTION, clip.sound.as_str()),
            (DESCRIBE_QUESTION, clip.description.as_str()),
            (SPEECH_QUESTION, clip.said.as_str()),
            (unrelated, reference),
        ] {
            lines.push(line(&path, question, answer));
        }
    }
    let mut summary = BuildSummary::default();
    write(&out.join("test.jsonl"), &lines, &mut summary)?;
    sources.sort();
    sources.dedup();
    let listed: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    let list = out.join("sources.txt");
    std::fs::write(&list, listed.join("\n") + "\n").map_err(|e| err(&list, e))?;
    Ok(summary)
}
