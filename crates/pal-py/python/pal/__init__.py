"""pal: build, train, probe, evaluate and serve audio-language models, from Python.

The work runs in pal's Rust core (the same functions as the ``pal`` command line), with the GIL
released; this package is a thin, typed front door::

    import pal
    m = pal.AudioLlm.load("adapters/smollm2-whisper-pal")
    m.ask("assets/clips/fsdd_7_theo_0.wav", "Which digit is spoken?")   # 'seven'

See ``docs/python.md`` in the repository.
"""

from ._pal import (
    AudioError,
    AudioLlm,
    ConfigError,
    Conversation,
    DataError,
    ModelError,
    PalError,
    ShardWriter,
    TrainError,
    __version__,
    bf16_kernels,
    encode,
    evaluate,
    fetch,
)
from ._pal import train as _train
from .probe import probe

__all__ = [
    "AudioError",
    "AudioLlm",
    "ConfigError",
    "Conversation",
    "DataError",
    "ModelError",
    "PalError",
    "ShardWriter",
    "TrainError",
    "__version__",
    "bf16_kernels",
    "encode",
    "evaluate",
    "fetch",
    "probe",
    "train",
]


def train(config, *, resume=False, on_step=None, progress=True, model=None, output=None,
          seed=None, skip_bad=False, device="cpu", dtype="auto"):
    """Trains a curriculum and returns its summary (``train_summary.json`` as a dict).

    ``config`` is a curriculum TOML path or a dict mirroring one (its relative paths are then
    relative to the current folder). ``on_step(metrics)`` is called after every optimizer step
    with a dict (``step``, ``stage``, ``loss``, ``lr``, ``grad_norm``, ``samples_per_s``, ...);
    returning ``False`` stops training, as Ctrl-C does: both leave a checkpoint, and
    ``resume=True`` continues from it (Ctrl-C then raises ``KeyboardInterrupt``).
    ``progress=True`` shows a tqdm bar when tqdm is installed.
    """
    hook = on_step
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(unit="step", desc="train")

            def hook(metrics, _user=on_step):
                bar.update(1)
                bar.set_postfix(stage=metrics["stage"], loss=f"{metrics['loss']:.4f}")
                return True if _user is None else _user(metrics)

    try:
        return _train(config, resume=resume, on_step=hook, model=model, output=output,
                      seed=seed, skip_bad=skip_bad, device=device, dtype=dtype, quiet=True)
    finally:
        if bar is not None:
            bar.close()
