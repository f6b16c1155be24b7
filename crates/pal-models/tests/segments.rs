//! A conversation rendered by the chat template and cut into segments: the clip's placeholder
//! and the trained answer where a user expects them.

use pal_models::formats::gguf::GgufFile;
use pal_models::text::chat_template::{ChatTemplate, Message};
use pal_models::text::segments::{prompt_segments, training_segments};
use pal_models::text::{Segment, Tokenizer};

#[test]
fn conversation_segments_mark_the_audio_and_the_trained_answer() {
    let Some(path) = pal_assets::for_test(&pal_assets::SMOLLM2_135M) else {
        return;
    };
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let template = ChatTemplate::for_tokenizer(&tokenizer).unwrap();
    let messages = vec![
        Message::new("user", "Which digit is spoken?"),
        Message::new("assistant", "seven"),
    ];
    let segs = training_segments(&template, &tokenizer, &messages).unwrap();
    let audio_at = segs
        .iter()
        .position(|s| *s == Segment::Audio)
        .expect("audio placeholder");
    let Segment::Text {
        ids,
        trained: false,
    } = &segs[audio_at - 1]
    else {
        panic!("{segs:?}")
    };
    assert!(tokenizer
        .decode(ids, false)
        .unwrap()
        .ends_with("<|im_start|>user\n"));
    let Segment::Text { ids, trained: true } = segs.last().unwrap() else {
        panic!("{segs:?}")
    };
    assert_eq!(tokenizer.decode(ids, false).unwrap(), "seven<|im_end|>\n");
    let prompt = prompt_segments(&template, &tokenizer, &messages[..1]).unwrap();
    let Segment::Text {
        ids,
        trained: false,
    } = prompt.last().unwrap()
    else {
        panic!()
    };
    assert!(tokenizer
        .decode(ids, false)
        .unwrap()
        .ends_with("<|im_start|>assistant\n"));
}
