"""Checkpoints: one orbax CheckpointManager holding the train state and its JSON side-car together.

Each step directory holds two items, saved and finalised as one:

* ``state``: the array pytree (parameters, optimiser state, RNG key data, step), saved per shard and
  restorable onto any mesh by giving a target of `jax.ShapeDtypeStruct`s with the new shardings;
* ``meta``: JSON (the data iterator's state, the parameter shapes, the step, anything else small).

Orbax writes a step into a temporary directory and renames it when complete, so a run killed mid-save
leaves the previous steps intact. A step that is complete on disk but unreadable (truncated or
corrupted files) is detected at restore: training moves it aside with one warning and uses the previous
step. Readers (`read_only=True`: `mdiff sample`, `mdiff eval`) change nothing on disk: they restore one
named step (`restore_step`) and report an unreadable one as an error.
"""

from __future__ import annotations

import base64
import logging
import pathlib
import shutil
import sys
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

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 2, use_async: bool = True, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        self.read_only = read_only
        if read_only:  # no saving, deleting, creating or cleaning: a trainer may be writing here right now
            options = ocp.CheckpointManagerOptions(
                read_only=True, enable_async_checkpointing=False, create=False, save_interval_steps=0, max_to_keep=None
            )
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=use_async,
                create=True,
                cleanup_tmp_directories=True,  # leftovers of a save cut short by a kill
            )
        absl_log = logging.getLogger("absl")
        absl_log.addFilter(_read_only_notice)  # orbax warns that read-only is read-only: as asked, not news
        try:
            self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)
        finally:
            absl_log.removeFilter(_read_only_notice)

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

    def reached_preemption(self, step: int) -> bool:
        """Whether JAX's preemption service asks every process to stop at `step` (False without one)."""
        try:
            return bool(self._manager.reached_preemption(step))
        except Exception:  # noqa: BLE001 - no preemption service in this runtime
            return False

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
        if self.read_only:
            raise CheckpointError("a read-only Checkpointer restores one named step (restore_step), never sets one aside")
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore_step(step, abstract_state, check_meta=check_meta)
            except CheckpointError as e:
                self._set_aside(step, e)
                continue
            return step, state, meta
        return None

    def restore_step(self, step: int, abstract_state: Any, *, check_meta=None) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of `step`; CheckpointError (one line) if it is unreadable. Changes nothing on disk."""
        return self._restore(step, ocp.args.StandardRestore(abstract_state), check_meta)

    def restore_params(self, step: int, abstract_params: Any, *, check_meta=None) -> tuple[Any, dict[str, Any]]:
        """(params, meta) of `step`, reading only the parameters of the saved train state (no optimiser
        state is built or read); CheckpointError (one line) if it is unreadable."""
        target = {"params": abstract_params}
        args = ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        )
        state, meta = self._restore(step, args, check_meta)
        return state["params"], meta

    def _restore(self, step: int, state_args: Any, check_meta) -> tuple[Any, dict[str, Any]]:
        """Read `step`'s meta, let `check_meta` refuse it, then its state item with `state_args`."""
        try:
            meta = self.read_meta(step)
        except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable
            raise _unreadable(step, e) from None
        if check_meta is not None:
            check_meta(meta)  # another model shape is a config error, not a damaged step
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=state_args))
        except Exception as e:  # noqa: BLE001
            raise _unreadable(step, e) from None
        return restored["state"], meta

    def _set_aside(self, step: int, error: BaseException) -> None:
        """Move an unreadable step out of orbax's sight so later saves of that step can proceed."""
        path = self.directory / str(step)
        log.warning("%s in %s; moving it to %s%s and using the previous one", error, self.directory, path.name, CORRUPT_SUFFIX)
        if jax.process_index() == 0 and path.exists():
            target = path.with_name(path.name + CORRUPT_SUFFIX)
            if target.exists():
                shutil.rmtree(target)
            path.rename(target)
        _sync("mdiff_checkpoint_set_aside")
        self._manager.reload()


def _read_only_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


def _unreadable(step: int, error: BaseException) -> CheckpointError:
    """One line naming the step and the first line of the reader's error; the abandoned reads stay quiet."""
    _quiet_abandoned_reads()
    first = str(error).splitlines()[0][:200] if str(error) else ""
    return CheckpointError(f"checkpoint step {step} is unreadable ({type(error).__name__}: {first})")


def _quiet_abandoned_reads() -> None:
    """A failed restore leaves orbax's other reads of that step running; their callbacks then reach an event
    loop that is closed and each prints a `RuntimeError: Event loop is closed` traceback (sys.unraisablehook).
    Those are the aftermath of the error already reported: drop exactly them; anything else still prints."""
    previous = sys.unraisablehook
    if getattr(previous, "_mdiff_quiet", False):
        return

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._mdiff_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
