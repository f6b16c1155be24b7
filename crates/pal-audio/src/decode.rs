//! Decoding audio files (wav, flac, ogg/vorbis, mp3) with symphonia, mixed down to mono f32.

use std::io::Cursor;
use std::path::Path;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::{resample, AudioError, AudioErrorKind, Result, SAMPLE_RATE};

/// Most channels a file may declare (FLAC's limit; surround formats stay within it).
const MAX_CHANNELS: usize = 8;

/// Most frames per packet a header may declare (FLAC's largest block is 65,535).
const MAX_FRAMES_PER_PACKET: u64 = 1 << 20;

/// Mono audio samples in [-1, 1] at `sample_rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples (channels averaged).
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
}

impl Audio {
    /// Duration in seconds.
    pub fn duration(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }

    /// The same audio at 16 kHz (a copy when it already is).
    pub fn to_16k(&self, origin: &str) -> Result<Audio> {
        Ok(Audio {
            samples: resample(&self.samples, self.sample_rate, SAMPLE_RATE, origin)?,
            sample_rate: SAMPLE_RATE,
        })
    }
}

/// Reads and decodes the file at `path`; errors name the file.
pub fn load_audio(path: &Path) -> Result<Audio> {
    let bytes = std::fs::read(path).map_err(|e| AudioError::file(path, AudioErrorKind::Io(e)))?;
    let ext = path.extension().and_then(|e| e.to_str());
    decode_bytes(bytes, ext, &path.display().to_string())
}

/// Decodes an in-memory file. `extension` (like `"wav"`) is a hint for the container probe;
/// `origin` names the input in errors (a path, or a request field).
pub fn decode_bytes(bytes: Vec<u8>, extension: Option<&str>, origin: &str) -> Result<Audio> {
    decode_bytes_limited(bytes, extension, origin, None)
}

/// [`decode_bytes`] that refuses audio longer than `max_seconds` without decoding (or holding)
/// more than that: a header that declares more is refused before decoding, and decoding stops at
/// the first packet past the limit, whatever the header claims. Memory stays within
/// `max_seconds` of mono samples at the file's rate plus one packet, at any rate and channel
/// count (what a server needs: a small, highly compressed file can hold hours of audio).
pub fn decode_bytes_limited(
    bytes: Vec<u8>,
    extension: Option<&str>,
    origin: &str,
    max_seconds: Option<f64>,
) -> Result<Audio> {
    let err = |kind| AudioError::new(origin, kind);
    if bytes.is_empty() {
        return Err(err(AudioErrorKind::Empty));
    }
    let stream = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymphoniaError::Unsupported(m) => err(AudioErrorKind::UnsupportedFormat(m.to_string())),
            other => err(AudioErrorKind::Corrupt(other.to_string())),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| {
            err(AudioErrorKind::UnsupportedCodec(
                "no decodable audio track".into(),
            ))
        })?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let sample_rate = params.sample_rate.ok_or_else(|| {
        err(AudioErrorKind::Corrupt(
            "no sample rate in the header".into(),
        ))
    })?;
    if !(1000..=384_000).contains(&sample_rate) {
        return Err(err(AudioErrorKind::SampleRate(sample_rate)));
    }
    // What a decoder reserves follows the header: refuse headers no real recording has before
    // any codec sizes its buffers by them.
    let channels = params.channels.map_or(1, |c| c.count());
    if channels > MAX_CHANNELS {
        return Err(err(AudioErrorKind::Corrupt(format!(
            "the header declares {channels} channels; at most {MAX_CHANNELS} are supported"
        ))));
    }
    if params
        .max_frames_per_packet
        .is_some_and(|f| f > MAX_FRAMES_PER_PACKET)
    {
        return Err(err(AudioErrorKind::Corrupt(format!(
            "the header declares packets of {} frames; at most {MAX_FRAMES_PER_PACKET} are supported",
            params.max_frames_per_packet.unwrap_or_default()
        ))));
    }
    // Most frames the limit allows (None: no limit).
    let max_frames = max_seconds.map(|s| (s * sample_rate as f64).floor() as u64);
    let too_long = |frames: u64| {
        err(AudioErrorKind::TooLong {
            seconds: frames as f64 / sample_rate as f64,
            limit: max_seconds.unwrap_or(f64::INFINITY),
        })
    };
    if let (Some(declared), Some(max)) = (params.n_frames, max_frames) {
        if declared > max {
            return Err(too_long(declared));
        }
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| err(AudioErrorKind::UnsupportedCodec(e.to_string())))?;

    let mut samples: Vec<f32> = Vec::new();
    let mut frames: u64 = 0;
    let mut buffer: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(err(AudioErrorKind::Corrupt(e.to_string()))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            Err(e) => return Err(err(AudioErrorKind::Corrupt(e.to_string()))),
        };
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        if let Some(max) = max_frames {
            if frames + decoded.frames() as u64 > max {
                return Err(too_long(frames + decoded.frames() as u64));
            }
        }
        let needed = decoded.capacity() as u64;
        let buf = match &mut buffer {
            Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
            _ => buffer.insert(SampleBuffer::<f32>::new(needed, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        let interleaved = buf.samples();
        frames += (interleaved.len() / channels) as u64;
        samples.extend(
            interleaved
                .chunks(channels)
                .map(|c| c.iter().sum::<f32>() / channels as f32),
        );
    }
    if let Some(declared) = params.n_frames {
        // Frames that could not be read (cut off, or skipped by the demuxer as damaged). Lossy
        // codecs may differ from the header by a little priming or block rounding.
        if frames + declared / 1000 < declared {
            return Err(err(AudioErrorKind::Truncated {
                declared,
                found: frames,
            }));
        }
    }
    if samples.is_empty() {
        return Err(err(AudioErrorKind::ZeroLength));
    }
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return Err(err(AudioErrorKind::NonFinite(i)));
    }
    Ok(Audio {
        samples,
        sample_rate,
    })
}
