"""The model calls, as a Python user makes them: the shipped adapter answers "seven" about the
bundled 'seven' clip from a path, from bytes and from an array; batches answer as single calls
do; a chat keeps its clip; bad inputs raise the errors Python users expect, naming the
argument."""

import numpy as np
import pytest

import pal

QUESTION = "Which digit is spoken?"


@pytest.fixture(scope="module")
def model(repo):
    pal.fetch()
    return pal.AudioLlm.load(repo / "adapters/smollm2-whisper-pal")


def test_seven_from_a_path_bytes_and_an_array(model, repo):
    clip = repo / "assets/clips/fsdd_7_theo_0.wav"
    assert model.ask(str(clip), QUESTION) == "seven"
    assert model.ask(clip, QUESTION) == "seven"  # os.PathLike
    assert model.ask(clip.read_bytes(), QUESTION) == "seven"
    samples = pal._pal.load_audio(str(clip), 16000)
    assert samples.dtype == np.float32
    assert model.ask(samples, QUESTION, sample_rate=16000) == "seven"
    at_8k = pal._pal.load_audio(str(clip), 8000)
    assert model.ask(at_8k, QUESTION, sample_rate=8000) == "seven"


def test_batches_answer_as_single_calls(model, repo):
    clips = [repo / "assets/clips" / name for name in
             ("fsdd_7_theo_0.wav", "fsdd_3_jackson_1.wav", "esc10_dog_4-184575-A-0.wav")]
    questions = [QUESTION, QUESTION, "What sound is this?"]
    batch = model.ask_batch([str(c) for c in clips], questions, batch_size=2)
    assert batch == [model.ask(str(c), q) for c, q in zip(clips, questions)]
    assert batch[:2] == ["seven", "three"]


def test_a_chat_keeps_its_clip(model, repo):
    chat = model.chat(str(repo / "assets/clips/esc10_dog_4-184575-A-0.wav"))
    assert chat.say("What sound is this?") == "dog"
    chat.say("And again?")
    assert [role for role, _ in chat.messages] == ["user", "assistant", "user", "assistant"]


def test_transcribe(model, repo):
    text = model.transcribe(str(repo / "assets/clips/jfk_16k.wav")).lower()
    assert "ask not what your country can do for you" in text


@pytest.mark.parametrize("audio, kwargs, words", [
    (np.zeros((2, 800), np.float32), {"sample_rate": 16000}, "1-D"),
    (np.zeros(800, np.float64), {"sample_rate": 16000}, "float32"),
    (np.array([0.0, np.nan], np.float32), {"sample_rate": 16000}, "not finite"),
    (np.zeros(800, np.float32), {"sample_rate": 0}, "sample_rate"),
    (np.zeros(800, np.float32), {}, "sample_rate"),
    (np.zeros(0, np.float32), {"sample_rate": 16000}, "no samples"),
    (b"", {}, "empty"),
])
def test_bad_arrays_raise_value_error_naming_the_argument(model, audio, kwargs, words):
    with pytest.raises(ValueError, match=words):
        model.ask(audio, QUESTION, **kwargs)


def test_bad_files_and_settings(model, repo):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        model.ask("missing.wav", QUESTION)
    with pytest.raises(pal.AudioError, match="audio"):
        model.ask(b"RIFF not a wav file", QUESTION)
    with pytest.raises(ValueError, match="temperature"):
        model.ask(str(repo / "assets/clips/fsdd_7_theo_0.wav"), QUESTION, temperature=3.0)
    with pytest.raises(FileNotFoundError):
        pal.AudioLlm.load("no/such/run")
    with pytest.raises(ValueError, match="dtype"):
        pal.AudioLlm.load(repo / "adapters/smollm2-whisper-pal", dtype="fp8")
    with pytest.raises(ValueError, match="2 clips"):
        model.ask_batch(["a.wav", "b.wav"], ["only one"])
    assert issubclass(pal.AudioError, pal.PalError)
