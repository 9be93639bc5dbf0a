"""Checkpoints: one orbax CheckpointManager holding the train state and its JSON side-car together.

Each step directory holds two items, saved and finalised as one:

* ``state``: the array pytree (parameters, optimiser state, RNG key data, step), saved per shard and
  restorable onto any mesh by giving a target of `jax.ShapeDtypeStruct`s with the new shardings;
* ``meta``: JSON (the data iterator's state, the parameter shapes, the step, anything else small).

Orbax writes a step into a temporary directory and renames it when complete, so a run killed mid-save
leaves the previous steps intact. A step that is complete on disk but unreadable (truncated or
corrupted files) is detected at restore: it is moved aside with a warning and the previous step is
used instead.
"""

from __future__ import annotations

import base64
import logging
import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit this run."""


def to_json_safe(value: Any) -> Any:
    """Bytes (as some iterator states hold) become {'__bytes__': base64}; everything else as is."""
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    return value


def from_json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {k: from_json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_safe(v) for v in value]
    return value


class Checkpointer:
    """Save every so often, keep the last `keep`, restore the newest readable step."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 2, use_async: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=use_async,
            create=True,
            cleanup_tmp_directories=True,  # leftovers of a save cut short by a kill
        )
        self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

    # -- saving -------------------------------------------------------------------------------
    def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
        """Start saving `step` (asynchronously); returns False when that step is already on disk."""
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(to_json_safe(dict(meta, step=step)))
        )
        return self._manager.save(step, args=args, force=True)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    # -- restoring ----------------------------------------------------------------------------
    def steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return from_json_safe(dict(restored["meta"]))

    def restore(self, abstract_state: Any, *, check_meta=None) -> tuple[int, Any, dict[str, Any]] | None:
        """Restore the newest readable step onto `abstract_state`'s shapes and shardings.

        `check_meta(meta)` runs before the arrays are read and may raise (a checkpoint of another model
        shape is an error, not a corrupt step). Returns (step, state, meta), or None if there is none.
        """
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable
                self._set_aside(step, e)
                continue
            if check_meta is not None:
                check_meta(meta)
            try:
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
                )
            except Exception as e:  # noqa: BLE001
                self._set_aside(step, e)
                continue
            return step, restored["state"], meta
        return None

    def _set_aside(self, step: int, error: BaseException) -> None:
        """Move an unreadable step out of orbax's sight so later saves of that step can proceed."""
        path = self.directory / str(step)
        log.warning(
            "checkpoint step %d in %s is unreadable (%s: %s); moving it to %s%s and using the previous one",
            step,
            self.directory,
            type(error).__name__,
            str(error).splitlines()[0][:200] if str(error) else "",
            path.name,
            CORRUPT_SUFFIX,
        )
        if jax.process_index() == 0 and path.exists():
            target = path.with_name(path.name + CORRUPT_SUFFIX)
            if target.exists():
                shutil.rmtree(target)
            path.rename(target)
        _sync("mdiff_checkpoint_set_aside")
        self._manager.reload()


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
