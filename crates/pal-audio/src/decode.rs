//! Decoding audio files (wav, flac, ogg/vorbis, mp3) with symphonia, mixed down to mono f32,
//! one packet at a time ([`Packets`]): [`decode_bytes`] and [`load_audio`] collect them at the
//! file's rate, [`crate::Stream16k`] resamples them to 16 kHz as they come.

use std::io::Cursor;
use std::path::Path;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{Decoder, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
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
/// count. (A server decodes with [`crate::Stream16k`] instead, which holds 16 kHz samples only.)
pub fn decode_bytes_limited(
    bytes: Vec<u8>,
    extension: Option<&str>,
    origin: &str,
    max_seconds: Option<f64>,
) -> Result<Audio> {
    let mut packets = Packets::from_bytes(bytes, extension, origin, max_seconds)?;
    let mut samples = vec![];
    while let Some(mono) = packets.next_mono()? {
        samples.extend_from_slice(&mono);
    }
    Ok(Audio {
        samples,
        sample_rate: packets.sample_rate(),
    })
}

/// A file's audio track, decoded one packet at a time and mixed down to mono, with the checks
/// every decode makes: the header's rate, channels and packet size are sane, a length limit
/// (from the header when it declares one, else at the first packet past it), no samples lost
/// against the header, no non-finite sample, not empty.
pub struct Packets {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    sample_rate: u32,
    declared: Option<u64>,
    max_seconds: Option<f64>,
    /// Frames decoded so far.
    frames: u64,
    buffer: Option<SampleBuffer<f32>>,
    origin: String,
    ended: bool,
}

impl Packets {
    /// Opens an in-memory file (see [`Packets::open`]).
    pub fn from_bytes(
        bytes: Vec<u8>,
        extension: Option<&str>,
        origin: &str,
        max_seconds: Option<f64>,
    ) -> Result<Self> {
        if bytes.is_empty() {
            return Err(AudioError::new(origin, AudioErrorKind::Empty));
        }
        Self::open(Box::new(Cursor::new(bytes)), extension, origin, max_seconds)
    }

    /// Opens the file at `path`, read as it is decoded (never held whole).
    pub fn from_path(path: &Path, max_seconds: Option<f64>) -> Result<Self> {
        let file =
            std::fs::File::open(path).map_err(|e| AudioError::file(path, AudioErrorKind::Io(e)))?;
        let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
        if empty {
            return Err(AudioError::file(path, AudioErrorKind::Empty));
        }
        let ext = path.extension().and_then(|e| e.to_str());
        Self::open(
            Box::new(file),
            ext,
            &path.display().to_string(),
            max_seconds,
        )
    }

    /// Probes the container and checks the header; `extension` is a hint for the probe,
    /// `origin` names the input in errors.
    pub fn open(
        source: Box<dyn MediaSource>,
        extension: Option<&str>,
        origin: &str,
        max_seconds: Option<f64>,
    ) -> Result<Self> {
        let err = |kind| AudioError::new(origin, kind);
        let stream = MediaSourceStream::new(source, Default::default());
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
                SymphoniaError::Unsupported(m) => {
                    err(AudioErrorKind::UnsupportedFormat(m.to_string()))
                }
                other => err(AudioErrorKind::Corrupt(other.to_string())),
            })?;
        let format = probed.format;
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
        // What a decoder reserves follows the header: refuse headers no real recording has
        // before any codec sizes its buffers by them.
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
        let decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| err(AudioErrorKind::UnsupportedCodec(e.to_string())))?;
        let packets = Self {
            format,
            decoder,
            track_id,
            sample_rate,
            declared: params.n_frames,
            max_seconds,
            frames: 0,
            buffer: None,
            origin: origin.to_string(),
            ended: false,
        };
        if let (Some(declared), Some(max)) = (packets.declared, packets.max_frames()) {
            if declared > max {
                return Err(packets.too_long(declared));
            }
        }
        Ok(packets)
    }

    /// The file's sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The length the header declares, in seconds, when it declares one.
    pub fn declared_seconds(&self) -> Option<f64> {
        self.declared.map(|f| f as f64 / self.sample_rate as f64)
    }

    /// Frames decoded so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The input's name in errors.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn err(&self, kind: AudioErrorKind) -> AudioError {
        AudioError::new(self.origin.clone(), kind)
    }

    /// Most frames the limit allows (None: no limit).
    fn max_frames(&self) -> Option<u64> {
        self.max_seconds
            .map(|s| (s * self.sample_rate as f64).floor() as u64)
    }

    fn too_long(&self, frames: u64) -> AudioError {
        self.err(AudioErrorKind::TooLong {
            seconds: frames as f64 / self.sample_rate as f64,
            limit: self.max_seconds.unwrap_or(f64::INFINITY),
        })
    }

    /// The next packet's samples, mixed down to mono (never empty); `None` once the track has
    /// ended (after checking that it held what its header declared, and something at all).
    pub fn next_mono(&mut self) -> Result<Option<Vec<f32>>> {
        let max = self.max_frames();
        while !self.ended {
            let packet = match self.format.next_packet() {
                Ok(p) => p,
                Err(SymphoniaError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    self.ended = true;
                    break;
                }
                Err(SymphoniaError::ResetRequired) => {
                    self.ended = true;
                    break;
                }
                Err(e) => return Err(self.err(AudioErrorKind::Corrupt(e.to_string()))),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let decoded = match self.decoder.decode(&packet) {
                Ok(d) => d,
                Err(SymphoniaError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    self.ended = true;
                    break;
                }
                Err(e) => {
                    let kind = AudioErrorKind::Corrupt(e.to_string());
                    return Err(AudioError::new(self.origin.clone(), kind));
                }
            };
            let spec = *decoded.spec();
            let channels = spec.channels.count().max(1);
            let frames = decoded.frames() as u64;
            if max.is_some_and(|max| self.frames + frames > max) {
                let seconds = (self.frames + frames) as f64 / self.sample_rate as f64;
                let limit = self.max_seconds.unwrap_or(f64::INFINITY);
                let kind = AudioErrorKind::TooLong { seconds, limit };
                return Err(AudioError::new(self.origin.clone(), kind));
            }
            let needed = decoded.capacity() as u64;
            let buf = match &mut self.buffer {
                Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
                _ => self.buffer.insert(SampleBuffer::<f32>::new(needed, spec)),
            };
            buf.copy_interleaved_ref(decoded);
            let mono: Vec<f32> = buf
                .samples()
                .chunks(channels)
                .map(|c| c.iter().sum::<f32>() / channels as f32)
                .collect();
            if let Some(i) = mono.iter().position(|s| !s.is_finite()) {
                let at = self.frames as usize + i;
                return Err(self.err(AudioErrorKind::NonFinite(at)));
            }
            self.frames += mono.len() as u64;
            if !mono.is_empty() {
                return Ok(Some(mono));
            }
        }
        if let Some(declared) = self.declared {
            // Frames that could not be read (cut off, or skipped by the demuxer as damaged).
            // Lossy codecs may differ from the header by a little priming or block rounding.
            if self.frames + declared / 1000 < declared {
                return Err(self.err(AudioErrorKind::Truncated {
                    declared,
                    found: self.frames,
                }));
            }
        }
        if self.frames == 0 {
            return Err(self.err(AudioErrorKind::ZeroLength));
        }
        Ok(None)
    }
}
