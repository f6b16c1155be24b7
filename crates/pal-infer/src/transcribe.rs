//! Greedy Whisper transcription without timestamps (`pal transcribe`), one 30 s window at a time.

use candle_core::{Device, Tensor};
use pal_audio::whisper_mel::WHISPER_WINDOW_SAMPLES;
use pal_audio::WhisperMel;
use pal_models::encoders::whisper::{Whisper, WhisperTokenizer};
use pal_models::encoders::LayerSelection;

use crate::sampling::argmax;
use crate::Result;

/// Transcribes 16 kHz mono `samples`. Clips longer than 30 s are cut into 30 s windows whose
/// texts are joined. Special tokens other than end-of-text are never generated.
pub fn transcribe(
    model: &Whisper,
    tokenizer: &WhisperTokenizer,
    samples: &[f32],
) -> Result<String> {
    let mut text = String::new();
    transcribe_windows(model, tokenizer, samples, |window| {
        text.push_str(window);
        true
    })?;
    Ok(text)
}

/// [`transcribe`] window by window: each 30 s window's text goes to `on_window` as soon as it
/// is decoded, which returns `false` to stop there (its caller went away). Returns whether
/// every window was transcribed.
pub fn transcribe_windows(
    model: &Whisper,
    tokenizer: &WhisperTokenizer,
    samples: &[f32],
    mut on_window: impl FnMut(&str) -> bool,
) -> Result<bool> {
    let decoder = model.decoder()?;
    let mel = WhisperMel::new(model.config.num_mel_bins);
    let device = model.encoder.embed_positions.device().clone();
    let dtype = model.encoder.embed_positions.dtype();
    for window in samples.chunks(WHISPER_WINDOW_SAMPLES) {
        let (feats, frames) = mel.compute(window, true);
        let feats = Tensor::from_vec(feats, (1, mel.n_mels(), frames), &Device::Cpu)?
            .to_device(&device)?
            .to_dtype(dtype)?;
        let audio = model.encoder.forward(&feats, LayerSelection::Last)?;
        let prompt = tokenizer.prompt();
        let mut cache = decoder.new_cache();
        let mut input = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
        let mut generated: Vec<u32> = vec![];
        let budget = decoder.max_tokens() / 2;
        while generated.len() < budget {
            let logits = decoder.forward(&input, &audio, &mut cache)?;
            let n = logits.dims()[1];
            let mut row = logits
                .get(0)?
                .get(n - 1)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            for &t in &tokenizer.suppress {
                if let Some(v) = row.get_mut(t as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
            if generated.is_empty() {
                for &t in &tokenizer.suppress_begin {
                    if let Some(v) = row.get_mut(t as usize) {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            // Only text and end-of-text: no other special or timestamp token.
            for v in row.iter_mut().skip(tokenizer.eot as usize + 1) {
                *v = f32::NEG_INFINITY;
            }
            let next = argmax(&row);
            if next == tokenizer.eot {
                break;
            }
            generated.push(next);
            input = Tensor::new(&[[next]], &device)?;
        }
        if !on_window(&tokenizer.decode(&generated)?) {
            return Ok(false);
        }
    }
    Ok(true)
}
