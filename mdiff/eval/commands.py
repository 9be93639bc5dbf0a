"""CLI hooks for `mdiff sample` and `mdiff eval` (wired in by mdiff/cli.py). JAX is imported inside `run_*`."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from mdiff.diffusion.sampling_defaults import TASK_SECTIONS as TASK_CHOICES
from mdiff.diffusion.sampling_defaults import file_defaults

SETTING_FLAGS = {  # flag -> (SamplerSettings field, type)
    "--steps": ("steps", int),
    "--grid": ("grid", str),
    "--method": ("method", str),
    "--temperature": ("temperature", float),
    "--top-k": ("top_k", int),
    "--top-p": ("top_p", float),
    "--guidance": ("guidance", float),
    "--ordering": ("ordering", str),
    "--remask": ("remask", float),
}


def _add_settings(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampler settings (default: the run's config.sampling.<task>)")
    group.add_argument(
        "--defaults",
        metavar="FILE",
        help="JSON of sampling.<task>.<key> settings, e.g. a sampling sweep's report/sampling_defaults.json "
        "(flags below still win)",
    )
    for flag, (field, kind) in SETTING_FLAGS.items():
        group.add_argument(flag, dest=field, type=kind, default=None)


def configure_sample(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a training run directory (config.json + checkpoints/)")
    parser.add_argument("--task", required=True, choices=TASK_CHOICES)
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", help="caption / transcript (t2i, t2s), image file (i2t), WAV file (s2t), or a text prefix")
    prompts.add_argument("--prompts", metavar="FILE", help="one prompt per line (same forms as --prompt)")
    parser.add_argument("--num", type=int, default=None, help="samples per prompt (default 1; unconditional text: sampling.batch_size)")
    parser.add_argument("--out", required=True, help="output folder: PNG / WAV / TXT files and samples.json")
    parser.add_argument("--seed", type=int, default=None, help="default: config.sampling.seed")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per sampler call (default: config.sampling.batch_size)")
    _add_step(parser)
    _add_settings(parser)


def _add_step(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step to use (default: the run's final step; an older one only when named here; "
        "the output records the step). Reading never changes the run directory.",
    )


def _check_positive(flag: str, value: int | None) -> None:
    from mdiff.diffusion.sampling import SamplingError

    if value is not None and value < 1:
        raise SamplingError(f"{flag}={value}: must be >= 1")


def _check_out(out: pathlib.Path, *, folder: bool) -> None:
    """--out must not name something of the other kind (a file for a folder, or a folder for a file)."""
    from mdiff.diffusion.sampling import SamplingError

    if folder and out.exists() and not out.is_dir():
        raise SamplingError(f"--out {out}: is an existing file; name a folder (new or existing) for the samples")
    if not folder and out.is_dir():
        raise SamplingError(f"--out {out}: is a folder; name the result file, e.g. {out / 'eval_samples.json'}")


def _read_prompts(args: argparse.Namespace) -> list[str | None]:
    from mdiff.diffusion.sampling import SamplingError

    if args.prompts:
        path = pathlib.Path(args.prompts)
        if not path.is_file():
            raise SamplingError(f"--prompts {args.prompts}: no such file")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise SamplingError(f"--prompts {args.prompts}: the file holds no prompts")
        return lines
    if args.prompt is not None:
        return [args.prompt]
    if args.task == "text":
        return [None]
    raise SamplingError(f"task {args.task!r} needs --prompt or --prompts")


def _load_condition(task: str, prompt: str | None, has_tokenizers: bool) -> Any:
    """Files for i2t (image) and s2t (WAV); everything else is used as given."""
    from mdiff.diffusion.sampling import SamplingError

    if prompt is None or not has_tokenizers or task not in ("i2t", "s2t"):
        return prompt
    path = pathlib.Path(prompt)
    kind = "an image" if task == "i2t" else "a 16-bit PCM WAV"
    if not path.is_file():
        raise SamplingError(f"task {task!r}: prompt {prompt!r} must be {kind} file")
    if task == "i2t":
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        try:
            return np.asarray(Image.open(path).convert("RGB"), np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise SamplingError(f"task 'i2t': prompt {prompt!r} is not {kind} file ({type(e).__name__})") from None
    from mdiff.data.sources import AudioError, parse_wav, resample

    try:
        wav, rate = parse_wav(path.read_bytes())
    except AudioError as e:
        raise SamplingError(f"task 's2t': prompt {prompt!r} is not {kind} file: {e}") from None
    return resample(wav, rate)


def _settings(config: Any, task: str, args: argparse.Namespace):
    from mdiff.diffusion.sampling import SamplerSettings, check_settings

    overrides = file_defaults(getattr(args, "defaults", None), task)
    overrides.update({field: getattr(args, field) for field, _ in SETTING_FLAGS.values() if getattr(args, field, None) is not None})
    settings = SamplerSettings.from_config(config.sampling[task], **overrides)
    check_settings(settings, conditional=task != "text", where=f"sampling.{task}")
    return settings


def run_sample(args: argparse.Namespace) -> int:
    import dataclasses

    from mdiff.diffusion.sampling import SamplingError
    from mdiff.eval.generate import generate
    from mdiff.eval.restore import data_source, read_run_config
    from mdiff.eval.tasks import check_task

    # Cheap checks first (before restoring or compiling anything).
    config = read_run_config(args.workdir)
    check_task(args.task, config)
    prompts = _read_prompts(args)
    num = args.num if args.num is not None else (int(config.sampling.batch_size) if args.task == "text" and prompts == [None] else 1)
    if num < 1:
        raise SamplingError(f"--num={num}: must be >= 1")
    _check_positive("--batch-size", args.batch_size)
    out = pathlib.Path(args.out)
    _check_out(out, folder=True)
    settings = _settings(config, args.task, args)
    _, tokenizers, _ = data_source(config)
    conditions = [_load_condition(args.task, p, tokenizers is not None) for p in prompts for _ in range(num)]

    from mdiff.eval.restore import load_run

    run = load_run(args.workdir, step=args.step)
    seed = int(config.sampling.seed if args.seed is None else args.seed)
    batch_size = int(config.sampling.batch_size if args.batch_size is None else args.batch_size)
    spans, batch = generate(run, args.task, conditions, settings, seed=seed, batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (span, condition) in enumerate(zip(spans, conditions)):
        prompt = prompts[i // num]
        files = write_output(run, args.task, span, out, f"{args.task}_{i:03d}", condition if args.task == "text" else None)
        records.append({"prompt": prompt, "files": files, "ids": [int(t) for t in span]})
    meta = {
        "workdir": str(args.workdir),
        "step": run.step,
        "final_step": run.final_step,
        "task": args.task,
        "seed": seed,
        "batch_size": batch_size,
        "settings": dataclasses.asdict(settings),
        "samples": records,
    }
    (out / "samples.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {len(records)} {args.task} samples to {out}", file=sys.stderr)
    return 0


def write_output(run: Any, task: str, ids: Any, out: pathlib.Path, stem: str, prefix: Any = None) -> list[str]:
    """PNG for images, WAV for audio, TXT for text (token ids as text when the run has no tokenizers)."""
    import numpy as np

    tok = run.tokenizers
    if tok is None:
        path = out / f"{stem}.txt"
        path.write_text(" ".join(str(int(t)) for t in ids) + "\n")
        return [path.name]
    if task == "t2i":
        from PIL import Image

        path = out / f"{stem}.png"
        Image.fromarray(np.asarray(tok.image.decode(ids), np.uint8)).save(path)
        return [path.name]
    if task == "t2s":
        path = out / f"{stem}.wav"
        write_wav(path, tok.audio.decode(ids))
        return [path.name]
    text = tok.text.decode(ids, stop_at_eod=task != "text")
    if task == "text" and prefix:
        text = f"{prefix}{text}"
    path = out / f"{stem}.txt"
    path.write_text(text + "\n")
    return [path.name]


def write_wav(path: pathlib.Path, wav: Any, rate: int = 16000) -> None:
    import wave

    import numpy as np

    pcm = (np.clip(np.asarray(wav, np.float32), -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a training run directory")
    parser.add_argument("--tasks", default="", help="comma-separated tasks (default: every task the run was trained for)")
    parser.add_argument("--num-samples", type=int, default=None, help="samples per task (default: config.sampling.num_eval_samples)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=None, help="result file (default: WORKDIR/eval_samples.json)")
    _add_step(parser)


def run_eval(args: argparse.Namespace) -> int:
    from mdiff import rundir
    from mdiff.eval.evaluate import EVAL_FILE, evaluate_run
    from mdiff.eval.restore import load_run, read_run_config
    from mdiff.eval.tasks import check_task

    config = read_run_config(args.workdir)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for task in tasks:
        check_task(task, config)
    _check_positive("--num-samples", args.num_samples)
    path = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / EVAL_FILE
    _check_out(path, folder=False)
    run = load_run(args.workdir, step=args.step)
    results = evaluate_run(run, tasks=tasks or None, num_samples=args.num_samples, seed=args.seed)
    results["final_step"] = run.final_step
    rundir.write_json_atomic(path, results)
    for task, scores in results["tasks"].items():
        headline = {k: round(v, 4) for k, v in scores.items() if isinstance(v, float)}
        print(f"{task}: {json.dumps(headline)}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0
