//! The model config file, and a forward + backward step of every route with the real
//! SmolLM2-135M-Instruct and Whisper tiny.en (randomly initialised adapters).

mod common;

use common::repo;

use candle_core::{DType, Device};
use pal_models::audio_llm::{build, ModelConfig};
use pal_models::audio_llm::{Example, Padding, Route};
use pal_models::text::Segment;
use pal_models::ModelError;

#[test]
fn shipped_config_parses_and_round_trips() {
    let config = ModelConfig::load(&repo().join("configs/smollm2-whisper-pal.toml")).unwrap();
    assert_eq!(config.encoders.len(), 1);
    assert_eq!(config.encoders[0].route, Route::Pal);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.toml");
    config.save(&path).unwrap();
    assert_eq!(ModelConfig::load(&path).unwrap(), config);
}

#[test]
fn config_errors_name_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    let text = std::fs::read_to_string(repo().join("configs/smollm2-whisper-pal.toml")).unwrap();
    std::fs::write(
        &path,
        text.replace("route = \"pal\"", "route = \"sideways\""),
    )
    .unwrap();
    let err = ModelConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml") && err.contains("sideways"),
        "{err}"
    );
    std::fs::write(
        &path,
        text.replace("real_length = true", "real_lenght = true"),
    )
    .unwrap();
    let err = ModelConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("real_lenght"), "{err}");
    assert!(matches!(
        ModelConfig::load(&tmp.path().join("none.toml")),
        Err(ModelError::NotFound(_))
    ));
}

#[test]
fn every_route_runs_forward_and_backward_on_the_real_models() {
    if pal_assets::for_test(&pal_assets::SMOLLM2_135M).is_none()
        || pal_assets::for_test(&pal_assets::WHISPER_TINY_EN).is_none()
    {
        return;
    }
    let clip = pal_audio::load_audio(&repo().join("assets/clips/jfk_16k.wav")).unwrap();
    let samples = &clip.samples[..16000 * 2];
    for route in [Route::Plits, Route::Lal, Route::Pal] {
        let mut config =
            ModelConfig::load(&repo().join("configs/smollm2-whisper-pal.toml")).unwrap();
        config.encoders[0].route = route;
        let built = build(&config, repo(), DType::F32, &Device::Cpu).unwrap();
        let audio = built.encoders[0].encode(samples).unwrap();
        assert_eq!(
            audio.dims(),
            &[100, 384],
            "2 s of real-length Whisper tokens (50 per second)"
        );
        let question = built
            .tokenizer
            .encode("<|im_start|>user\nWhat is said?")
            .unwrap();
        let answer = built
            .tokenizer
            .encode(" And so my fellow Americans<|im_end|>")
            .unwrap();
        let example = Example {
            segments: vec![
                Segment::Text {
                    ids: question,
                    trained: false,
                },
                Segment::Audio,
                Segment::Text {
                    ids: answer.clone(),
                    trained: true,
                },
            ],
            clips: vec![vec![audio]],
        };
        let mut batch = built.model.prepare(&[example], Padding::Right).unwrap();
        let (loss, n) = built.model.loss(&mut batch).unwrap();
        assert_eq!(n, answer.len(), "every answer token is a target");
        let value = loss.to_scalar::<f32>().unwrap();
        assert!(value.is_finite() && value > 0.0, "{route:?}: loss {value}");
        let grads = loss.backward().unwrap();
        for (name, var) in built.params.vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{route:?}: {name} has no gradient"));
            assert!(
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0,
                "{route:?}: {name}"
            );
        }
    }
}

/// A misspelt key in any table of a model config is refused, naming the key and its table (a
/// misspelt `lal.start` would otherwise silently put audio in every layer).
#[test]
fn a_misspelt_key_in_any_nested_table_is_refused_with_key_and_table() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    let text = std::fs::read_to_string(repo().join("configs/smollm2-whisper-pal.toml")).unwrap();
    let cases = [
        (
            "lal = { start = 15",
            "lal = { strat = 15",
            "strat",
            "encoders[0].lal",
        ),
        (
            "queries = 16",
            "querys = 16",
            "querys",
            "encoders[0].summary",
        ),
        (
            "path = \"asset:smollm2",
            "pth = \"asset:smollm2",
            "pth",
            "llm",
        ),
        (
            "real_length = true",
            "real_lenght = true",
            "real_lenght",
            "encoders[0]",
        ),
        ("frozen_ffn = false", "frozen_fn = false", "frozen_fn", ""),
    ];
    for (good, bad, key, table) in cases {
        assert!(text.contains(good), "{good}");
        std::fs::write(&path, text.replacen(good, bad, 1)).unwrap();
        let err = ModelConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains(&format!("unknown field `{key}`")), "{err}");
        if !table.is_empty() {
            assert!(err.contains(&format!("in table {table}")), "{err}");
        }
    }
    // The PLITS connector table too.
    let plits = std::fs::read_to_string(repo().join("configs/smollm2-whisper-plits.toml")).unwrap();
    let connector = plits
        .lines()
        .find(|l| l.starts_with("connector"))
        .expect("the PLITS config names its connector");
    std::fs::write(
        &path,
        plits.replace(connector, "connector = { type = \"mlp\", stak = 2 }"),
    )
    .unwrap();
    let err = ModelConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("unknown field `stak`") && err.contains("in table encoders[0].connector"),
        "{err}"
    );
}
