//! Audio at 16 kHz as it is decoded: [`Stream16k`] decodes a file one packet at a time, mixes it
//! to mono and resamples it as it goes, so neither the file's samples at its own rate nor (when
//! the caller consumes the chunks) the whole recording are ever held. The chunks joined equal
//! [`crate::load_audio`] then [`crate::Audio::to_16k`], bit for bit.

use std::path::Path;

use crate::decode::Packets;
use crate::resample::StreamResampler;
use crate::{Result, SAMPLE_RATE};

/// A file decoded to 16 kHz mono, chunk by chunk.
pub struct Stream16k {
    packets: Packets,
    resampler: Option<StreamResampler>,
}

impl Stream16k {
    /// Decodes the file at `path` as it is read; `max_seconds` as in [`Packets::open`].
    pub fn from_path(path: &Path, max_seconds: Option<f64>) -> Result<Self> {
        Ok(Self::new(Packets::from_path(path, max_seconds)?))
    }

    /// Decodes an in-memory file.
    pub fn from_bytes(
        bytes: Vec<u8>,
        extension: Option<&str>,
        origin: &str,
        max_seconds: Option<f64>,
    ) -> Result<Self> {
        Ok(Self::new(Packets::from_bytes(
            bytes,
            extension,
            origin,
            max_seconds,
        )?))
    }

    /// Resamples what `packets` decode.
    pub fn new(packets: Packets) -> Self {
        let resampler = StreamResampler::new(packets.sample_rate(), SAMPLE_RATE, packets.origin());
        Self {
            packets,
            resampler: Some(resampler),
        }
    }

    /// The length the header declares, in seconds, when it declares one.
    pub fn declared_seconds(&self) -> Option<f64> {
        self.packets.declared_seconds()
    }

    /// Seconds decoded so far.
    pub fn seconds_decoded(&self) -> f64 {
        self.packets.frames() as f64 / self.packets.sample_rate() as f64
    }

    /// The next 16 kHz samples (a packet's worth, or the end's; possibly empty while the
    /// resampler fills); `None` once the file has ended and everything was returned.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<f32>>> {
        let Some(resampler) = &mut self.resampler else {
            return Ok(None);
        };
        match self.packets.next_mono()? {
            Some(mono) => resampler.push(&mono).map(Some),
            None => {
                let resampler = self.resampler.take().expect("checked above");
                resampler.finish().map(Some)
            }
        }
    }

    /// Every remaining sample.
    pub fn read_all(mut self) -> Result<Vec<f32>> {
        let mut samples = vec![];
        while let Some(chunk) = self.next_chunk()? {
            samples.extend_from_slice(&chunk);
        }
        Ok(samples)
    }
}
