//! Tasks that widen what a model can name beyond ESC-10's ten sounds, part of `pal data
//! instruct`: `instruments` (sixteen General MIDI instruments rendered with fluidsynth, held out
//! by melody and by register), `languages` (fourteen languages spoken by espeak-ng, held out by
//! what is said and by voice) and `unknown` (generated sounds outside every label set, answered
//! "I don't know what this sound is.", held out by kind of sound). A model that only ever learned
//! ten labels answers one of them for any recording; these give it more names, and a way to say
//! it has none.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};
use std::process::Command;

use pal_nn::rng::SplitMix64;

use crate::instruct::{generated_task, noise_sample, pick, uniform, Part, RATE};
use crate::shared::{err, BuildError, BuildSummary, DESCRIBE_QUESTION, SOUND_QUESTION};

/// Asked of the instrument clips.
pub const INSTRUMENT_QUESTION: &str = "Which instrument is playing?";
/// Asked of the language clips.
pub const LANGUAGE_QUESTION: &str = "Which language is spoken?";
/// The answer for a sound outside every label set.
pub const UNKNOWN_ANSWER: &str = "I don't know what this sound is.";

/// General MIDI programs (0-based) and the names answered for them.
pub const INSTRUMENTS: [(u8, &str); 16] = [
    (0, "piano"),
    (6, "harpsichord"),
    (12, "marimba"),
    (13, "xylophone"),
    (19, "church organ"),
    (21, "accordion"),
    (24, "acoustic guitar"),
    (40, "violin"),
    (42, "cello"),
    (46, "harp"),
    (56, "trumpet"),
    (57, "trombone"),
    (65, "saxophone"),
    (68, "oboe"),
    (71, "clarinet"),
    (73, "flute"),
];

/// espeak-ng voices and the names answered for their languages.
pub const LANGUAGES: [(&str, &str); 14] = [
    ("en-us", "English"),
    ("fr", "French"),
    ("de", "German"),
    ("es", "Spanish"),
    ("it", "Italian"),
    ("pt", "Portuguese"),
    ("nl", "Dutch"),
    ("sv", "Swedish"),
    ("pl", "Polish"),
    ("fi", "Finnish"),
    ("tr", "Turkish"),
    ("hu", "Hungarian"),
    ("cs", "Czech"),
    ("ru", "Russian"),
];

/// Where Debian's `fluid-soundfont-gm` installs its General MIDI soundfont.
pub const DEBIAN_SOUNDFONT: &str = "/usr/share/sounds/sf2/FluidR3_GM.sf2";

/// The lowest note (MIDI number) of a melody, by split: validation and test play in registers
/// no training clip plays in, between those it does.
fn registers(part: Part) -> &'static [u8] {
    match part {
        Part::Train => &[48, 55, 62, 69],
        Part::Validation => &[52, 65],
        Part::Test => &[59, 72],
    }
}

/// espeak-ng's voice variants: these for training, others held out for validation and testing.
fn voice_variants(part: Part) -> &'static [&'static str] {
    match part {
        Part::Train => &["m1", "m2", "m4", "f1", "f2"],
        Part::Validation => &["m3", "f3"],
        Part::Test => &["m7", "f4"],
    }
}

/// A value in `0..n` whose sum with `sum` is one of the part's residues mod 4: the last draw of a
/// melody or number list, so that every split says different things.
fn completing(rng: &mut SplitMix64, sum: usize, part: Part, n: usize) -> usize {
    let residues = part.residues();
    let residue = residues[pick(rng, residues.len())];
    let base = (residue + 4 - sum % 4) % 4;
    base + 4 * pick(rng, (n - base).div_ceil(4))
}

/// A melody from `part`: scale degrees (0..8 of a major scale) and lengths in beats. Melodies
/// are split by the sum of their degrees mod 4, so no melody is in two splits.
pub fn melody(rng: &mut SplitMix64, part: Part) -> Vec<(usize, f32)> {
    let notes = 5 + pick(rng, 4);
    let mut degrees: Vec<usize> = (0..notes - 1).map(|_| pick(rng, 8)).collect();
    let sum = degrees.iter().sum();
    degrees.push(completing(rng, sum, part, 8));
    degrees
        .into_iter()
        .map(|d| (d, [0.5, 1.0, 1.0, 1.5][pick(rng, 4)]))
        .collect()
}

/// The split of a melody (its degrees), as [`melody`] assigns it.
pub fn melody_part(degrees: &[usize]) -> Part {
    match degrees.iter().sum::<usize>() % 4 {
        0 => Part::Test,
        1 => Part::Validation,
        _ => Part::Train,
    }
}

/// A standard MIDI file (format 0, 480 ticks per beat) playing `notes` (MIDI number, beats) on
/// `program` at `bpm` and `velocity`, one after another.
pub fn midi_file(program: u8, notes: &[(u8, f32)], bpm: f32, velocity: u8) -> Vec<u8> {
    fn delta(out: &mut Vec<u8>, mut ticks: u32) {
        let mut bytes = vec![(ticks & 0x7f) as u8];
        ticks >>= 7;
        while ticks > 0 {
            bytes.push((ticks & 0x7f) as u8 | 0x80);
            ticks >>= 7;
        }
        out.extend(bytes.iter().rev());
    }
    let mut track = vec![];
    let tempo = (60_000_000.0 / bpm) as u32;
    delta(&mut track, 0);
    track.extend([0xff, 0x51, 0x03]);
    track.extend(&tempo.to_be_bytes()[1..]);
    delta(&mut track, 0);
    track.extend([0xc0, program]);
    for &(note, beats) in notes {
        delta(&mut track, 0);
        track.extend([0x90, note, velocity]);
        delta(&mut track, (beats * 480.0) as u32);
        track.extend([0x80, note, 0]);
    }
    delta(&mut track, 0);
    track.extend([0xff, 0x2f, 0x00]);
    let mut file = b"MThd".to_vec();
    file.extend(6u32.to_be_bytes());
    file.extend([0, 0, 0, 1, 0x01, 0xe0]);
    file.extend(b"MTrk");
    file.extend((track.len() as u32).to_be_bytes());
    file.extend(track);
    file
}

/// The soundfont to render with: `PAL_SOUNDFONT`, else Debian's, if the file exists and
/// `fluidsynth` runs.
pub fn fluidsynth_soundfont() -> Option<PathBuf> {
    let font = std::env::var_os("PAL_SOUNDFONT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEBIAN_SOUNDFONT));
    let runs = Command::new("fluidsynth")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (runs && font.is_file()).then_some(font)
}

/// Renders `midi` with fluidsynth (no reverb or chorus: the same bytes every time) into a mono
/// 16 kHz clip at `path`, its silent tail cut and its peak at `level`.
fn render(font: &Path, midi: &[u8], level: f32, path: &Path) -> Result<(), BuildError> {
    let midi_path = path.with_extension("mid");
    let stereo = path.with_extension("render.wav");
    std::fs::write(&midi_path, midi).map_err(|e| err(&midi_path, e))?;
    let output = Command::new("fluidsynth")
        .args(["-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r"])
        .arg(RATE.to_string())
        .args(["-T", "wav", "-F"])
        .arg(&stereo)
        .arg(font)
        .arg(&midi_path)
        .output()
        .map_err(|e| err(path, format!("running fluidsynth: {e}")))?;
    if !output.status.success() {
        return Err(err(
            path,
            format!(
                "fluidsynth failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    let audio = pal_audio::load_audio(&stereo).map_err(|e| err(&stereo, e))?;
    let _ = std::fs::remove_file(&midi_path);
    let _ = std::fs::remove_file(&stereo);
    let mut samples = audio.samples;
    let peak = samples.iter().fold(0f32, |m, x| m.max(x.abs()));
    if peak < 1e-4 {
        return Err(err(
            path,
            "fluidsynth rendered silence (is the soundfont a General MIDI one?)",
        ));
    }
    // Cut the tail once it stays 50 dB below the peak, with 50 ms of fade.
    let last = samples
        .iter()
        .rposition(|x| x.abs() > peak * 0.003)
        .unwrap_or(0);
    let end = (last + RATE as usize / 20).min(samples.len());
    samples.truncate(end);
    let fade = (RATE as usize / 20).min(samples.len());
    let n = samples.len();
    for (i, x) in samples[n - fade..].iter_mut().enumerate() {
        *x *= 1.0 - i as f32 / fade as f32;
    }
    samples.iter_mut().for_each(|x| *x *= level / peak);
    pal_audio::write_wav(path, &samples, RATE).map_err(|e| err(path, e))
}

/// A sound outside every label set, of kind `kind` (see [`UNKNOWN_KINDS`]), about 1 to 2 s.
fn unknown_sound(rng: &mut SplitMix64, kind: usize) -> Vec<f32> {
    let n = (uniform(rng, 1.0, 2.0) * RATE as f32) as usize;
    let t = |i: usize| i as f32 / RATE as f32;
    let mut out: Vec<f32> = match kind {
        // A sine sweeping up or down over several octaves.
        0 => {
            let (f0, f1) = (uniform(rng, 100.0, 400.0), uniform(rng, 1500.0, 4000.0));
            let (f0, f1) = if rng.next_f64() < 0.5 {
                (f0, f1)
            } else {
                (f1, f0)
            };
            let seconds = n as f32 / RATE as f32;
            let k = (f1 / f0).ln() / seconds;
            (0..n)
                .map(|i| (2.0 * PI * f0 * ((k * t(i)).exp() - 1.0) / k).sin())
                .collect()
        }
        // A warbling tone: frequency modulation at a few hertz.
        1 => {
            let (carrier, depth, rate) = (
                uniform(rng, 300.0, 1200.0),
                uniform(rng, 50.0, 300.0),
                uniform(rng, 3.0, 9.0),
            );
            (0..n)
                .map(|i| {
                    let phase =
                        carrier * t(i) - depth / (2.0 * PI * rate) * (2.0 * PI * rate * t(i)).cos();
                    (2.0 * PI * phase).sin()
                })
                .collect()
        }
        // A train of clicks, regular or not.
        2 => {
            let gap = uniform(rng, 0.03, 0.2);
            let jitter = uniform(rng, 0.0, 0.5);
            let mut out = vec![0f32; n];
            let mut at = 0.0f32;
            while ((at * RATE as f32) as usize) < n {
                let start = (at * RATE as f32) as usize;
                for (j, x) in out[start..].iter_mut().take(40).enumerate() {
                    *x += (-(j as f32) / 6.0).exp() * if j % 2 == 0 { 1.0 } else { -1.0 };
                }
                at += gap * (1.0 + jitter * (rng.next_f64() as f32 - 0.5));
            }
            out
        }
        // Noise swelling and fading a few times a second.
        3 => {
            let rate = uniform(rng, 1.0, 5.0);
            let mut last = 0f32;
            (0..n)
                .map(|i| {
                    last = 0.7 * last + 0.3 * noise_sample(rng);
                    last * (0.5 - 0.5 * (2.0 * PI * rate * t(i)).cos())
                })
                .collect()
        }
        // Short blips at random pitches.
        _ => {
            let mut out = vec![0f32; n];
            let mut at = 0usize;
            while at < n {
                let (hz, len) = (
                    uniform(rng, 400.0, 3000.0),
                    (uniform(rng, 0.02, 0.08) * RATE as f32) as usize,
                );
                for (j, x) in out[at..].iter_mut().take(len).enumerate() {
                    *x = (2.0 * PI * hz * t(j)).sin() * (1.0 - j as f32 / len as f32);
                }
                at += len + (uniform(rng, 0.03, 0.25) * RATE as f32) as usize;
            }
            out
        }
    };
    let peak = out.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    let gain = uniform(rng, 0.2, 0.6) / peak;
    out.iter_mut().for_each(|x| *x *= gain);
    out
}

/// The kinds of [`unknown_sound`], by split: training hears three, validation and test one each
/// that training never heard, so that the score says whether the answer carries over to new
/// sounds.
pub const UNKNOWN_KINDS: [(&str, Part); 5] = [
    ("sweep", Part::Train),
    ("warble", Part::Train),
    ("clicks", Part::Train),
    ("swelling noise", Part::Validation),
    ("blips", Part::Test),
];

/// Builds `instruments` (when a soundfont and fluidsynth are here), `languages` (when `espeak`)
/// and `unknown` under `out`, with the instruction set's splits (`(name, clips)`; the two named
/// tasks get twice as many clips, having more classes).
pub(crate) fn build_vocabulary_tasks(
    out: &Path,
    seed: u64,
    splits: &[(&str, usize)],
    espeak: bool,
    summary: &mut BuildSummary,
) -> Result<(), BuildError> {
    let doubled: Vec<(&str, usize)> = splits.iter().map(|&(s, n)| (s, 2 * n)).collect();
    match fluidsynth_soundfont() {
        Some(font) => generated_task(out, "instruments", seed, 0x1257, &doubled, summary, |rng, split, i, path| {
            let part = Part::of_split(split);
            let (program, name) = INSTRUMENTS[i % INSTRUMENTS.len()];
            let scale = [0u8, 2, 4, 5, 7, 9, 11, 12];
            let register = registers(part);
            let base = register[pick(rng, register.len())];
            let notes: Vec<(u8, f32)> = melody(rng, part)
                .into_iter()
                .map(|(d, beats)| (base + scale[d], beats))
                .collect();
            let bpm = uniform(rng, 100.0, 160.0);
            let velocity = 70 + pick(rng, 41) as u8;
            render(&font, &midi_file(program, &notes, bpm, velocity), uniform(rng, 0.2, 0.6), path)?;
            Ok(vec![
                (INSTRUMENT_QUESTION, name.to_string()),
                (SOUND_QUESTION, name.to_string()),
                (DESCRIBE_QUESTION, format!("a {name} playing a melody")),
            ])
        })?,
        None => eprintln!(
            "warning: fluidsynth or a General MIDI soundfont ({DEBIAN_SOUNDFONT}, or PAL_SOUNDFONT) \
             is missing; the instruments task is skipped (Debian: apt-get install fluidsynth fluid-soundfont-gm)"
        ),
    }
    if espeak {
        generated_task(
            out,
            "languages",
            seed,
            0x1a9,
            &doubled,
            summary,
            |rng, split, i, path| {
                let part = Part::of_split(split);
                let (voice, language) = LANGUAGES[i % LANGUAGES.len()];
                let variants = voice_variants(part);
                let variant = variants[pick(rng, variants.len())];
                let text = spoken_numbers(rng, part);
                let speed = 130 + pick(rng, 50) as u32;
                crate::instruct::espeak(&text, &format!("{voice}+{variant}"), speed, path)?;
                Ok(vec![
                    (LANGUAGE_QUESTION, language.to_string()),
                    (SOUND_QUESTION, "someone speaking".to_string()),
                    (DESCRIBE_QUESTION, format!("a person speaking {language}")),
                ])
            },
        )?;
    }
    generated_task(
        out,
        "unknown",
        seed,
        0x0dd,
        splits,
        summary,
        |rng, split, i, path| {
            let part = Part::of_split(split);
            let kinds: Vec<usize> = (0..UNKNOWN_KINDS.len())
                .filter(|&k| UNKNOWN_KINDS[k].1 == part)
                .collect();
            let samples = unknown_sound(rng, kinds[i % kinds.len()]);
            pal_audio::write_wav(path, &samples, RATE).map_err(|e| err(path, e))?;
            Ok(vec![
                (SOUND_QUESTION, UNKNOWN_ANSWER.to_string()),
                (DESCRIBE_QUESTION, UNKNOWN_ANSWER.to_string()),
            ])
        },
    )
}

/// What a language clip says: three to five numbers (0 to 999) as digits, which espeak-ng reads
/// in the voice's language. Split by their sum mod 4, so no list is said in two splits.
pub fn spoken_numbers(rng: &mut SplitMix64, part: Part) -> String {
    let count = 3 + pick(rng, 3);
    let mut numbers: Vec<usize> = (0..count - 1)
        .map(|_| {
            if rng.next_f64() < 0.5 {
                pick(rng, 20)
            } else {
                pick(rng, 1000)
            }
        })
        .collect();
    let sum = numbers.iter().sum();
    numbers.push(completing(rng, sum, part, 100));
    numbers
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The split of a list of numbers that [`spoken_numbers`] said.
pub fn numbers_part(text: &str) -> Part {
    let sum: usize = text
        .split(", ")
        .filter_map(|n| n.parse::<usize>().ok())
        .sum();
    melody_part(&[sum])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every melody and list of numbers lands in the split it was drawn for, so no melody or
    /// list is in two splits.
    #[test]
    fn what_is_played_or_said_is_held_out_by_split() {
        let mut rng = SplitMix64::new(3);
        for part in [Part::Train, Part::Validation, Part::Test] {
            for _ in 0..500 {
                let degrees: Vec<usize> = melody(&mut rng, part).iter().map(|n| n.0).collect();
                assert!(degrees.iter().all(|&d| d < 8), "{degrees:?}");
                assert_eq!(melody_part(&degrees), part, "{degrees:?}");
                let text = spoken_numbers(&mut rng, part);
                assert_eq!(numbers_part(&text), part, "{text}");
            }
        }
        // Registers and voices: the held-out ones are never trained on.
        for held_out in [Part::Validation, Part::Test] {
            assert!(registers(held_out)
                .iter()
                .all(|r| !registers(Part::Train).contains(r)));
            let voices = voice_variants(held_out);
            assert!(voices
                .iter()
                .all(|v| !voice_variants(Part::Train).contains(v)));
        }
    }

    /// The MIDI file is what a reader expects: a format-0 header, one track whose stated length
    /// is its length, and a note-on and note-off per note.
    #[test]
    fn midi_files_are_well_formed() {
        let notes = [(60, 1.0), (64, 0.5), (67, 200.0)];
        let file = midi_file(40, &notes, 120.0, 100);
        assert_eq!(&file[..8], b"MThd\0\0\0\x06");
        assert_eq!(&file[8..14], &[0, 0, 0, 1, 0x01, 0xe0]);
        assert_eq!(&file[14..18], b"MTrk");
        let len = u32::from_be_bytes(file[18..22].try_into().unwrap()) as usize;
        assert_eq!(file.len(), 22 + len);
        assert!(file.ends_with(&[0xff, 0x2f, 0x00]));
        let ons = file.windows(2).filter(|w| w[0] == 0x90).count();
        assert_eq!(ons, notes.len());
        // 200 beats = 96000 ticks: a three-byte delta.
        assert!(file.windows(3).any(|w| w == [0x85, 0xee, 0x00]));
    }

    /// Each held-out split hears a kind of unknown sound that training never does.
    #[test]
    fn held_out_unknown_sounds_are_new_kinds() {
        for part in [Part::Validation, Part::Test] {
            let kinds: Vec<_> = UNKNOWN_KINDS.iter().filter(|k| k.1 == part).collect();
            assert!(!kinds.is_empty(), "{part:?} has no kind of its own");
        }
        let mut rng = SplitMix64::new(1);
        for kind in 0..UNKNOWN_KINDS.len() {
            let x = unknown_sound(&mut rng, kind);
            let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                x.len() >= RATE as usize && (0.19..=0.61).contains(&peak),
                "{kind}: {peak}"
            );
        }
    }
}
