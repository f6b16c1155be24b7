//! The encoder thread takes the chats waiting together: clips of equal length are encoded in
//! one batch, a clip two of them ask about is encoded once (with the audio cache on), and every
//! chat gets the answer it gets alone.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use pal_infer::{ChatTemplate, GenerationParams, Message};
use pal_serve::engine::{self, Batching, Bundle, Event, Job};
use tokio::sync::mpsc;

/// A chat job asking `question` about `clip`, and where its answer arrives.
fn chat(bundle: &Bundle, question: &str, clip: Vec<f32>) -> (Job, mpsc::UnboundedReceiver<Event>) {
    let template = ChatTemplate::for_tokenizer(&bundle.tokenizer).unwrap();
    let messages = [Message::new("user", question)];
    let segments =
        pal_models::text::segments::prompt_segments(&template, &bundle.tokenizer, &messages)
            .unwrap();
    let (events, answer) = mpsc::unbounded_channel();
    let params = GenerationParams {
        max_tokens: 8,
        ..Default::default()
    };
    let job = Job {
        segments,
        clips: vec![clip],
        growing: None,
        params,
        events,
        arrived: std::time::Instant::now(),
    };
    (job, answer)
}

/// The text of an answer, once it is done.
fn text(mut answer: mpsc::UnboundedReceiver<Event>) -> String {
    let mut text = String::new();
    loop {
        match answer.blocking_recv().expect("the answer ends with Done") {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done { .. } => return text,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn waiting_chats_are_encoded_together_and_answer_as_alone() {
    let Some(bundle) = bundle() else { return };
    let decode = |wav: Vec<u8>| {
        pal_audio::decode_bytes(wav, Some("wav"), "test clip")
            .and_then(|a| a.to_16k("test clip"))
            .unwrap()
            .samples
    };
    let speech = decode(clip_wav())[..32_000].to_vec();
    let louder = |gain: f32| speech.iter().map(|s| s * gain).collect::<Vec<f32>>();
    let tone = decode(tone_wav(1.0));
    // Three clips of one length, a clip of another, and the first clip again.
    let clips = [louder(1.0), louder(0.5), louder(0.25), tone, louder(1.0)];

    let (queue, receiver) = engine::queue(bundle.clone(), 16);
    let answers: Vec<_> = clips
        .iter()
        .map(|clip| {
            let (job, answer) = chat(&bundle, "What is said?", clip.clone());
            queue.submit(job).unwrap();
            answer
        })
        .collect();
    let _worker = engine::start_on(bundle.clone(), Batching::default(), &queue, receiver);
    let together: Vec<String> = answers.into_iter().map(text).collect();
    let c = &queue.counters;
    assert_eq!(
        c.encoder_batches.load(Ordering::Relaxed),
        2,
        "one batch per length"
    );
    assert_eq!(c.audio_cache_misses.load(Ordering::Relaxed), 4);
    assert_eq!(c.audio_cache_hits.load(Ordering::Relaxed), 1);

    // One at a time, without the cache: the same answers.
    let alone = Batching {
        max_batch: 1,
        audio_cache_bytes: 0,
        ..Batching::default()
    };
    let (queue, _worker) = engine::start(Arc::clone(&bundle), alone);
    for (clip, expected) in clips.iter().zip(&together) {
        let (job, answer) = chat(&bundle, "What is said?", clip.clone());
        queue.submit(job).unwrap();
        assert_eq!(&text(answer), expected);
    }
    assert_eq!(queue.counters.encoder_batches.load(Ordering::Relaxed), 5);
}
