"""Command line: `python -m blipdiff_export convert <checkpoint-dir-or-hub-id> --out <dir> [...]`.

stdout carries only the output folder; progress goes to stderr. Exit codes: 0 success,
1 export error (one `error: ...` line on stderr), 2 usage error, 130 interrupted (SIGINT), 143
terminated (SIGTERM); an interrupted export removes its staging folder and prints the one line
`interrupted: nothing was written` (see signals.py).

Test hook: BLIPDIFF_TEST_PAUSE_AFTER=<module name> (qformer, unet, ...) makes the export sleep for a
minute after writing that module and printing its progress line, so that tests can interrupt an
export at a known point. It is meant for tests only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import signals
from .errors import ExportError

INTERRUPTED = "interrupted: nothing was written"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blipdiff_export", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    convert = commands.add_parser(
        "convert",
        help="export a BLIP-Diffusion checkpoint to TorchScript modules + manifest",
        description="Export a diffusers-format BLIP-Diffusion checkpoint (folder or hub id) to the folder "
        "layout of docs/manifest.md.",
    )
    convert.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint folder (holding model_index.json) or hub id such as Salesforce/blipdiffusion; "
        "optional with --random-weights",
    )
    convert.add_argument(
        "--out", "-o", type=Path, required=True, help="output folder (created; must not exist or be empty)"
    )
    convert.add_argument(
        "--qformer-vocab",
        type=Path,
        metavar="FILE",
        help="bert-base-uncased vocab.txt for the Q-Former tokenizer, when the checkpoint has no qformer_tokenizer/ "
        "(default: the checkpoint's, else the local Hugging Face cache)",
    )
    convert.add_argument(
        "--tokenizer-dir",
        type=Path,
        metavar="DIR",
        help="CLIP tokenizer folder (tokenizer.json or vocab.json + merges.txt) (default: the checkpoint's tokenizer/)",
    )
    convert.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights (fixed seed) instead of the checkpoint's; without a checkpoint, the published "
        "full-size configs are used",
    )
    convert.add_argument(
        "--with-controlnet", action="store_true", help="also export the ControlNet (default: when the pipeline has one)"
    )
    convert.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "convert":
        if args.checkpoint is None and not args.random_weights:
            parser.error("convert: give a checkpoint folder or hub id, or --random-weights")
        import torch

        from .export import convert

        # blipdiff's stderr policy (docs/cli.md): on CPUs NNPACK does not support, torch would log a warning for
        # every convolution it runs (export runs none today; this keeps it so).
        torch.backends.nnpack.set_flags(False)

        try:
            out = convert(
                args.checkpoint,
                args.out,
                qformer_vocab=args.qformer_vocab,
                tokenizer_dir=args.tokenizer_dir,
                random_weights=args.random_weights,
                with_controlnet=args.with_controlnet,
                force=args.force,
            )
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except signals.Interrupted as e:
            print(INTERRUPTED, file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:  # SIGINT without signals.install(): main() called in-process
            print(INTERRUPTED, file=sys.stderr)
            return 130
        print(out)
    return 0


if __name__ == "__main__":
    signals.install()
    code = main()
    signals.ignore_for_exit()
    sys.exit(code)
