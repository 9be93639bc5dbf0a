"""From a trained run directory to what the samplers need: the config, tokenizers, a logits function
and the parameters.

The model is rebuilt exactly as training builds it (`mdiff.train.loop.model_setup`: same shape, residual
scale and mesh) and the parameters of the run's final checkpoint (not its optimiser state) are restored
through the training checkpointer, read-only: reading a run changes nothing in its directory. An older
step is used only when asked for by number.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
from flax import nnx

from mdiff.config import ConfigDict
from mdiff.vocab import UnifiedVocab


def model_logits_fn(graphdef: Any):
    """`logits_fn(state, tokens, batch)` for an NNX model split into (graphdef, state).

    The state travels as a jit argument, so the weights are not folded into the compiled sampler.
    """

    def logits_fn(state: Any, tokens: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        model = nnx.merge(graphdef, state)
        return model(tokens, batch["modality"], batch["segment_ids"], batch["positions"])

    return logits_fn


@dataclasses.dataclass
class LoadedRun:
    workdir: pathlib.Path
    config: ConfigDict
    vocab: UnifiedVocab
    tokenizers: Any  # mdiff.data.tokenizers.Tokenizers, or None for the synthetic dataset
    corpus_name: str  # "synthetic" or the data directory
    graphdef: Any
    state: Any  # nnx.State of the parameters
    step: int
    final_step: int | None = None  # the run's last step (step < final_step only when asked for with --step)

    @property
    def seq_len(self) -> int:
        return int(self.config.data.seq_len)

    @property
    def logits_fn(self):
        return model_logits_fn(self.graphdef)


def read_run_config(workdir: str | pathlib.Path) -> ConfigDict:
    """The run's resolved config.json; sections and keys it lacks (older runs) come from today's defaults."""
    from mdiff import rundir
    from mdiff.defaults import base_config

    saved = rundir.read_config(workdir)
    if saved is None:
        raise rundir.WorkdirError(f"--workdir {workdir}: no {rundir.CONFIG_FILE}; is it a training run directory?")
    config = base_config()
    with config.unlocked():
        for key, value in saved.items():
            if key == "sampling" and not all(t in value for t in ("text", "t2i")):
                continue  # a run from before per-task sampling settings: keep the defaults
            if isinstance(value, dict) and isinstance(config.get(key), ConfigDict):
                value = _merged(config[key].to_dict(), value)
            config[key] = ConfigDict(value) if isinstance(value, dict) else value
    return config


def _merged(defaults: dict, saved: dict) -> dict:
    """`saved` over `defaults`, recursively: a key added since the run was trained keeps its default."""
    out = dict(defaults)
    for key, value in saved.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def data_source(config: ConfigDict) -> tuple[UnifiedVocab, Any, str]:
    """(vocab, tokenizers or None, corpus name) for the run's dataset."""
    from mdiff.data.pipeline import default_data_dir

    if config.data.dataset == "synthetic":
        from mdiff.data.corpus import SYNTHETIC_VOCAB

        return SYNTHETIC_VOCAB, None, "synthetic"
    from mdiff.data.tokenizers import load_tokenizers

    path = default_data_dir(config.data.data_dir) if config.data.dataset == "embedded" else config.data.dataset
    tokenizers = load_tokenizers(path)
    return tokenizers.vocab, tokenizers, path


def final_step(workdir: str | pathlib.Path, on_disk: list[int]) -> int | None:
    """The run's last step: its newest checkpoint, or the step summary.json says it completed at."""
    from mdiff import rundir

    summary = rundir.read_summary(workdir) or {}
    done = [int(summary["steps"])] if summary.get("status") == "complete" and summary.get("steps") is not None else []
    return max(on_disk + done, default=None)


def load_run(workdir: str | pathlib.Path, step: int | None = None) -> LoadedRun:
    """Rebuild the run's model and restore checkpoint `step` (default: the run's final step), read-only.

    A final step that is missing or unreadable is an error naming the newest older step to ask for.
    """
    from mdiff import rundir
    from mdiff.train import loop
    from mdiff.train.checkpoint import CheckpointError, Checkpointer

    workdir = pathlib.Path(workdir)
    config = read_run_config(workdir)
    vocab, tokenizers, name = data_source(config)
    model = loop.model_setup(config, vocab)
    checkpoints = workdir / rundir.CHECKPOINT_DIR
    if not checkpoints.is_dir():
        raise rundir.WorkdirError(f"--workdir {workdir}: no {rundir.CHECKPOINT_DIR}/ to sample from")
    checkpointer = Checkpointer(checkpoints, read_only=True)
    try:
        on_disk = checkpointer.steps()
        final = final_step(workdir, on_disk)
        want = final if step is None else int(step)
        if want is None:
            raise rundir.WorkdirError(f"--workdir {workdir}: {rundir.CHECKPOINT_DIR}/ holds no checkpoint")
        older = [s for s in on_disk if s < want]
        hint = (f"; pass --step {older[-1]} to use the newest older one" if older else "; no older checkpoint to use") + (
            ", or retrain the lost steps with `mdiff train --resume`" if step is None else ""
        )
        if want not in on_disk:
            what = "the run's final step" if step is None else "--step"
            raise rundir.WorkdirError(f"--workdir {workdir}: no checkpoint of step {want} ({what}); on disk: {on_disk}{hint}")
        try:
            check = loop.shape_checker(model, workdir)
            restored, _ = checkpointer.restore_params(want, model.abstract_pure(), check_meta=check)
        except CheckpointError as e:
            raise rundir.WorkdirError(f"--workdir {workdir}: {e}{hint}") from None
    finally:
        checkpointer.close()
    params = jax.tree.map(lambda x: x, model.abstract_params)
    nnx.replace_by_pure_dict(params, restored)
    graphdef, model_state = nnx.split(nnx.merge(model.graphdef, params))
    return LoadedRun(workdir, config, vocab, tokenizers, name, graphdef, model_state, int(want), final)
