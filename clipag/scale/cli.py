"""The options every generating command shares for many images and bounded memory, and their checks.

``add_scale_options(parser, command)`` adds ``--prompts FILE --out DIR --batch K --max-views-per-batch N
--memory SIZE``. A command then calls ``scale = ScaleRun.from_args(args)`` first (it checks the options and the
prompt file before any model loads, and under torchrun binds this rank to its device), passes ``**scale.knobs``
into its config, and after building its optimiser, ``if scale.prompt_file: return scale.run(optimiser)``.
Only argparse is imported at module level (``clipag --help`` stays fast).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["add_scale_options", "ScaleRun", "launched_distributed"]

_WHAT = {"generate": "prompts", "draw": "prompts", "vqgan": "prompts (text:weight:stop|...)", "style": "style texts"}


def add_scale_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Register the options on ``command``'s parser (call it after the command's own options)."""
    group = parser.add_argument_group("many images and memory (README: Many images)")
    group.add_argument("--prompts", dest="prompt_file", default=None, metavar="FILE",
                       help=f"make one image per line of FILE: .txt ({_WHAT[command]}, one a line) or .jsonl "
                            "(one JSON object a line, with optional seed, steps and other settings per item); "
                            "needs --out; a re-run skips finished items" +
                            ("; CONTENT may then be a folder or a .txt list of images" if command == "style" else ""))
    group.add_argument("--out", default=None, metavar="DIR",
                       help="with --prompts: the folder for the images and manifest.jsonl")
    group.add_argument("--batch", type=int, default=1, metavar="K",
                       help="with --prompts: optimise K images together, sharing each encoder call (for GPUs); "
                            "each keeps its own optimizer and random stream (default 1)")
    group.add_argument("--max-views-per-batch", type=int, default=None, metavar="N",
                       help="at most N views per encoder call (same result, less memory)")
    group.add_argument("--memory", default=None, metavar="SIZE",
                       help="keep the process within SIZE (e.g. 8GB, 8GiB): resident memory on a CPU, weights "
                            "included; allocated memory on CUDA (default: the device's free memory)")
    parser.set_defaults(scale_command=command, scale_output_default=parser.get_default("output"))


def launched_distributed() -> bool:
    """Started by torchrun (or srun) with several processes."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")) or 1) > 1


def _default_config(command: str) -> Any:
    if command == "generate":
        from ..generation import GenerateConfig

        return GenerateConfig()
    if command == "draw":
        from ..adapters.clipdraw.drawer import DrawConfig

        return DrawConfig()
    if command == "vqgan":
        from ..adapters.vqgan_clip.loop import VQGANCLIPConfig

        return VQGANCLIPConfig()
    from ..adapters.clipstyler.styler import StyleConfig

    return StyleConfig()


@dataclass
class ScaleRun:
    """The checked options, and for ``--prompts`` the process group and the runner."""

    args: argparse.Namespace
    command: str
    knobs: dict[str, Any] = field(default_factory=dict)
    prompt_file: Path | None = None
    out: Path | None = None
    dist: Any = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ScaleRun:
        """Check the options (``ValueError`` with a message for the user) and read the prompt file once."""
        from .memory import parse_size

        command = args.scale_command
        knobs: dict[str, Any] = {}
        if args.max_views_per_batch is not None:
            if args.max_views_per_batch < 1:
                raise ValueError(f"--max-views-per-batch must be >= 1, got {args.max_views_per_batch}")
            knobs["max_views_per_batch"] = args.max_views_per_batch
        if args.memory is not None:
            parse_size(args.memory)
            knobs["memory"] = args.memory
        if args.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {args.batch}")
        run = cls(args, command, knobs)
        if args.prompt_file is None:
            if args.batch > 1 or args.out is not None:
                raise ValueError("--batch and --out go with --prompts FILE")
            if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
                raise ValueError("under torchrun, give --prompts FILE --out DIR: each process then makes its share "
                                 "of the items (one prompt on every process would make the same image N times)")
            return run
        run._check_prompt_mode()
        run.prompt_file, run.out = Path(args.prompt_file), Path(args.out)
        from ..images import check_output

        check_output(run.out / "manifest.jsonl", "--out", (".jsonl",))  # a folder this process can write in
        run.items(_default_config(command))  # the file's mistakes now, before a model loads
        if launched_distributed():
            from ..finetune.distributed import setup

            run.dist = setup(args.device or "auto")
            args.device = str(run.dist.device)
        return run

    def _check_prompt_mode(self) -> None:
        args, command = self.args, self.command
        if args.out is None:
            raise ValueError("--prompts FILE needs --out DIR (the folder for the images and manifest.jsonl)")
        given = args.texts if command == "style" else (args.prompts if command != "vqgan" else args.prompt)
        if given:
            raise ValueError(f"give the {_WHAT[command]} in --prompts FILE or on the command line, not both")
        output = getattr(args, "output", None)
        if output is not None and output != args.scale_output_default:
            raise ValueError("-o/--output names one file; with --prompts the files go to --out DIR")
        for option in ("frames", "compare", "grid", "png"):
            if getattr(args, option, None):
                raise ValueError(f"--{option} is not available with --prompts (the manifest lists what was made)")

    def items(self, defaults: Any) -> list:
        from .items import content_images, read_items

        args = self.args
        count = args.count
        contents = content_images(args.content) if self.command == "style" else None
        return read_items(self.prompt_file, self.command, seed=args.seed, count=count, defaults=defaults,
                          contents=contents)

    def run(self, worker: Any) -> int:
        """Make the prompt file's items with ``worker`` (the command's optimiser, built from the options)."""
        from ..finetune.distributed import Dist, cleanup
        from .jobs import job_for
        from .runner import run_items

        job = job_for(self.command, self.args, worker)
        dist = self.dist or Dist(0, 1, 0, worker.device)
        try:
            return run_items(job, self.items(job.config), self.out, model=self.args.model, dist=dist,
                             batch=self.args.batch, quiet=self.args.quiet)
        except ValueError as e:  # a changed config, a busy folder, a bad item: a message, not a traceback
            print(f"clipag {self.command}: error: {e}", file=sys.stderr)
            return 2
        finally:
            cleanup(dist)
