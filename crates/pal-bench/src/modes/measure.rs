//! One measurement, in the child process: build the model, time steps, report peak memory.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use pal_models::audio_llm::config::ConnectorConfig;
use pal_models::audio_llm::{Attachment, AudioLlm, Example, Padding};
use pal_models::text::Segment;
use pal_models::Llama;
use pal_models::WeightForm;
use pal_nn::Params;
use pal_train::metrics::memory_bytes;

use super::{ChildJob, ChildResult, Measurement, Setup, Trainable};
use crate::report::median;

/// The LLM of a setup and its report name, on the setup's device in its dtype: random weights
/// for `shapes`, else the file.
pub fn setup_llm(setup: &Setup) -> anyhow::Result<(Llama, String)> {
    let precision = setup.dtype.precision(setup.device);
    let (dtype, device) = (precision.dtype, setup.device.open()?);
    let (mut llm, name) = match setup.shapes {
        Some(shapes) => {
            let llm = Llama::random(shapes.config()?, dtype, &device)?;
            (llm, shapes.report_name().into())
        }
        None => {
            let path = crate::llm_or_default(setup.llm.as_deref())?;
            let (llm, _) = pal_models::load_llm(&path, dtype, &device)?;
            let name = path.file_name().map(|n| n.to_string_lossy().to_string());
            (llm, name.unwrap_or_default())
        }
    };
    if precision.bf16_products {
        llm.hold_bf16()?;
    }
    Ok((llm, name))
}

/// The audio-LLM of a measurement: one encoder on `route`, LAL from `lal_start`.
pub(super) fn model(
    setup: &Setup,
    route: pal_models::audio_llm::Route,
    params: &Params,
) -> anyhow::Result<AudioLlm> {
    let (llm, _) = setup_llm(setup)?;
    let mut attachment = Attachment::new("audio", setup.d_enc, route);
    attachment.lal.start = setup.lal_start;
    attachment.summary = ConnectorConfig::Latent {
        queries: setup.summary,
        layers: 1,
    };
    Ok(AudioLlm::new(llm, &[attachment], params)?)
}

/// `batch` examples of `na` random encoder frames and `text_tokens` token ids.
pub(super) fn examples(
    setup: &Setup,
    vocab: usize,
    batch: usize,
    na: usize,
    trained: bool,
) -> anyhow::Result<Vec<Example>> {
    (0..batch)
        .map(|i| {
            let frames = pal_nn::gradcheck::pseudo_random(na * setup.d_enc, i as u64);
            let audio =
                Tensor::from_vec(frames, (na, setup.d_enc), &Device::Cpu)?.to_dtype(DType::F32)?;
            let ids: Vec<u32> = (0..setup.text_tokens)
                .map(|t| ((t * 7919 + i * 104_729 + 13) % vocab) as u32)
                .collect();
            Ok(Example::one_clip(
                vec![Segment::Audio, Segment::Text { ids, trained }],
                vec![audio],
            ))
        })
        .collect()
}

/// Device memory in use on a GPU (total less free); `None` on the CPU.
fn gpu_bytes_in_use(device: &Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some((total - free) as f64);
    }
    let _ = device;
    None
}

/// The highest device memory in use seen at the points a measurement samples (GPU only).
struct GpuPeak<'a> {
    device: &'a Device,
    before: Option<f64>,
    peak: Option<f64>,
}

impl<'a> GpuPeak<'a> {
    fn new(device: &'a Device) -> Self {
        let before = gpu_bytes_in_use(device);
        Self {
            device,
            before,
            peak: before,
        }
    }

    /// Waits for the device's queued work (timings end here) and samples its memory.
    fn sample(&mut self) -> anyhow::Result<()> {
        self.device.synchronize()?;
        if let Some(now) = gpu_bytes_in_use(self.device) {
            self.peak = Some(self.peak.map_or(now, |p| p.max(now)));
        }
        Ok(())
    }

    /// The peak less what was in use before the model was built.
    fn added(&self) -> Option<f64> {
        Some(self.peak? - self.before?)
    }
}

/// Makes the job's measurement in this process and returns it (the child side of the protocol:
/// the caller prints it as one JSON line).
pub fn run_child(job: &ChildJob) -> anyhow::Result<ChildResult> {
    let setup = &job.setup;
    let device = setup.device.open()?;
    let mut gpu = GpuPeak::new(&device);
    let dtype = setup.dtype.precision(setup.device).dtype;
    let params = Params::new(0, Params::master_dtype(dtype), &device);
    let route = match job.measurement {
        Measurement::Train { route, .. } | Measurement::Infer { route, .. } => route,
    };
    let mut model = model(setup, route, &params)?;
    let vocab = model.llm.config.vocab_size;
    let (_, rss_before) = memory_bytes();
    let mut result = match job.measurement {
        Measurement::Train {
            audio_tokens,
            trainable,
            ..
        } => {
            if trainable == Trainable::Lora {
                let targets = ["q_proj".to_string(), "v_proj".to_string()];
                model.llm.attach_lora(&params, 8, 16.0, &targets, false)?;
            }
            let examples = examples(setup, vocab, setup.batch, audio_tokens, true)?;
            let (mut times, mut forwards) = (vec![], vec![]);
            for step in 0..=setup.steps {
                let start = Instant::now();
                let mut batch = model.prepare(&examples, Padding::Right)?;
                let (loss, _) = model.loss(&mut batch)?;
                gpu.sample()?;
                let forward = start.elapsed().as_secs_f64();
                let grads = loss.backward()?;
                gpu.sample()?;
                drop(grads);
                if step > 0 {
                    times.push(start.elapsed().as_secs_f64());
                    forwards.push(forward);
                }
            }
            ChildResult {
                step_seconds: Some(median(times)),
                forward_seconds: Some(median(forwards)),
                ..Default::default()
            }
        }
        Measurement::Infer {
            audio_tokens,
            batch: batch_size,
            ..
        } => {
            if setup.shapes.is_none() {
                // As `pal ask`, `eval` and `serve` hold them by default.
                let path = crate::llm_or_default(setup.llm.as_deref())?;
                pal_models::llm::weight_form::apply(&mut model.llm, &path, WeightForm::Auto)?;
            }
            let examples = examples(setup, vocab, batch_size, audio_tokens, false)?;
            let (mut prefills, mut decodes) = (vec![], vec![]);
            for run in 0..=setup.steps {
                let start = Instant::now();
                let mut batch = model.prepare(&examples, Padding::Left)?.detach();
                let hidden = model.llm.forward_embeds(
                    &batch.embeds,
                    Some(&batch.valid),
                    &mut batch.cache,
                )?;
                let n = hidden.dims()[1];
                let mut next = model.llm.logits(&hidden.narrow(1, n - 1, 1)?)?.argmax(2)?;
                gpu.sample()?;
                let prefill = start.elapsed().as_secs_f64();
                let start = Instant::now();
                for _ in 0..setup.decode_tokens {
                    let logits = model.llm.forward(&next, None, &mut batch.cache)?;
                    next = logits.argmax(2)?;
                }
                gpu.sample()?;
                if run > 0 {
                    prefills.push(prefill);
                    decodes.push(start.elapsed().as_secs_f64());
                }
            }
            let (prefill, decode) = (median(prefills), median(decodes));
            ChildResult {
                prefill_seconds: Some(prefill),
                decode_tokens_per_second: Some((batch_size * setup.decode_tokens) as f64 / decode),
                samples_per_second: Some(batch_size as f64 / (prefill + decode)),
                ..Default::default()
            }
        }
    };
    let (peak, _) = memory_bytes();
    result.peak_rss_bytes = peak as f64;
    result.peak_gpu_bytes = gpu.added();
    result.rss_before_bytes = Some(rss_before as f64);
    Ok(result)
}
