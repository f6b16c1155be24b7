//! A small shared data folder made for the data builders' tests.
#![allow(dead_code)]

use std::path::Path;

pub const RATE: u32 = 16_000;

/// FSDD's sample rate (its WAV files are 8 kHz; ESC-10's are 16 kHz).
pub const FSDD_RATE: u32 = 8_000;

/// A tone of `hz` for `seconds` at 16 kHz: each clip's pitch tells it apart.
pub fn tone(hz: f32, seconds: f32) -> Vec<f32> {
    tone_at(hz, seconds, RATE)
}

/// A tone of `hz` for `seconds` at `rate` Hz.
pub fn tone_at(hz: f32, seconds: f32, rate: u32) -> Vec<f32> {
    (0..(seconds * rate as f32) as usize)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
        .collect()
}

/// `fsdd/` (8 kHz, as FSDD's files are) with digits 0-2 of one speaker (takes 0-1 official test, 2-4 train, 5-7 validation)
/// and `esc10/` with two classes of five source recordings each (source 2 tests, 4 validates).
pub fn shared(root: &Path) {
    let fsdd = root.join("fsdd/recordings");
    std::fs::create_dir_all(&fsdd).unwrap();
    let mut labels = String::from("path,digit,word,speaker,index,split\n");
    for digit in 0..3 {
        for take in 0..8 {
            let name = format!("{digit}_ann_{take}.wav");
            let hz = 300.0 + 200.0 * digit as f32 + 20.0 * take as f32;
            let samples = tone_at(hz, 0.4, FSDD_RATE);
            pal_audio::write_wav(&fsdd.join(&name), &samples, FSDD_RATE).unwrap();
            let split = if take < 2 { "test" } else { "train" };
            let word = ["zero", "one", "two"][digit];
            labels += &format!("recordings/{name},{digit},{word},ann,{take},{split}\n");
        }
    }
    std::fs::write(root.join("fsdd/labels.csv"), labels).unwrap();
    let esc = root.join("esc10/audio");
    std::fs::create_dir_all(&esc).unwrap();
    let mut rows = String::from("path,category,src_file,esc10\n");
    for (c, category) in ["dog", "rooster"].iter().enumerate() {
        for source in 0..5 {
            let name = format!("{category}-{source}.wav");
            let hz = 600.0 + 200.0 * c as f32 + 10.0 * source as f32;
            pal_audio::write_wav(&esc.join(&name), &tone(hz, 1.0), RATE).unwrap();
            rows += &format!("audio/{name},{category},src{source},True\n");
        }
    }
    std::fs::write(root.join("esc10/labels.csv"), rows).unwrap();
}

/// The lines of a JSONL manifest, parsed.
pub fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
