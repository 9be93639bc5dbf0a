"""CLI hooks for `mdiff data ...` (the lead wires `configure` and `run` into mdiff/cli.py).

    mdiff data build   [--data-dir DIR] [--scale full|tiny] [--force] [--no-progress]
                       [--config FILE.py:VARIANT [--config.data.KEY=VALUE ...]]
    mdiff data info    [--data-dir DIR] [--quality]
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{build,info}")
    build = sub.add_parser("build", help="build the embedded tri-modal dataset and its tokenizers (idempotent)")
    build.add_argument("--data-dir", default="", help="target directory (default: $MDIFF_DATA_DIR or ~/.cache/mdiff/data)")
    build.add_argument("--scale", choices=("full", "tiny"), default=None, help="full corpora (default), or a small real subset for tests")
    build.add_argument("--force", action="store_true", help="rebuild even if an intact build with these settings exists")
    build.add_argument("--no-progress", action="store_true", help="no progress lines")
    build.add_argument("--config", default=None, help="take tokenizer/slot/voice settings (and data_dir, scale) from this config")
    build.add_argument("overrides", nargs="*", metavar="--config.KEY=VALUE", help="config overrides (with --config)")
    info = sub.add_parser("info", help="describe a built dataset and check its files")
    info.add_argument("--data-dir", default="", help="dataset directory (default: $MDIFF_DATA_DIR or ~/.cache/mdiff/data)")
    info.add_argument("--quality", action="store_true", help="also measure tokenizer reconstruction (PSNR, WER; about a minute)")


def run(args: argparse.Namespace) -> int:
    from mdiff.data.pipeline import default_data_dir  # imports grain/JAX: keep `mdiff --help` fast

    if args.data_command == "build":
        from mdiff.data.build import build_dataset

        settings, scale, data_dir = None, args.scale or "full", default_data_dir(args.data_dir)
        if args.config:
            from mdiff.config import load_config

            config = load_config(args.config, args.overrides)
            settings = config.data
            data_dir = default_data_dir(args.data_dir or config.data.data_dir)
            scale = args.scale or config.data.scale
        manifest = build_dataset(data_dir, scale=scale, force=args.force, progress=not args.no_progress, settings=settings)
        print(json.dumps(summary(data_dir, manifest), indent=2))
        return 0
    data_dir = default_data_dir(args.data_dir)
    if args.data_command == "info":
        return info(data_dir, quality=args.quality)
    print(f"unknown data command {args.data_command!r}; known: build, info", file=sys.stderr)
    return 2


def summary(data_dir: str, manifest: dict) -> dict:
    return {
        "data_dir": data_dir,
        "scale": manifest.get("scale"),
        "vocab": {k: v for k, v in manifest.get("vocab", {}).items() if k != "specials"},
        "counts": manifest.get("counts"),
        "audio_tokens_per_second": manifest.get("audio_tokens_per_second"),
        "build_seconds": manifest.get("build_seconds"),
        "files": len(manifest.get("files", {})),
    }


def info(data_dir: str, *, quality: bool = False) -> int:
    from mdiff.data.build import read_manifest
    from mdiff.data.reader import check_dataset_dir

    check_dataset_dir(data_dir)  # raises a one-line DataError if missing or damaged
    out = summary(data_dir, read_manifest(data_dir) or {})
    out["checksums"] = "ok"
    if quality:
        from mdiff.data.quality import tokenizer_quality

        out["quality"] = tokenizer_quality(data_dir)
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m mdiff.data.commands build ...`) until the CLI wires it."""
    parser = argparse.ArgumentParser(prog="mdiff data")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
