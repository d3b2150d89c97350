"""One command-line convention for clipag's generators: ``generate``, ``draw``, ``vqgan`` and ``style``.

Every generator takes these options, with the same names and meanings (each command adds its own knobs):

=====================  ==============================================================================
``-n, --count N``      results per prompt, with seeds SEED, SEED+1, ... (``--n`` still works, deprecated)
``--seed S``           the first seed; the same seed on the same machine gives the same result
``--steps N``          optimisation steps (each command keeps its upstream's default)
``-o, --output FILE``  the result. Default: the prompt as a file name (``a-red-apple.png``; ``style``
                       puts the photo's name first). Several results are ``FILE-000.EXT``,
                       ``FILE-001.EXT``, ... in prompt order, seeds within a prompt, plus ``FILE-grid.png``;
                       a ``--compare`` model's are ``FILE-000-compare.EXT``, ...
``--model M``          the CLIP: a registry name, an ``hf-hub:`` id, a folder or a checkpoint file
                       (default ``ViT-B/32``, i.e. CLIPAG)
``--device D``         default: cuda if available, else cpu (the same rule as finetune and eval)
``--amp MODE``         CLIP under autocast: auto (bf16/fp16 on CUDA, off elsewhere), bf16, fp16 or off
``--frames GIF``       also write the optimisation as an animated GIF, numbered like ``-o``
``--threads N``        torch CPU threads (default: one per core), as finetune's and eval's ``--threads``
``-q, --quiet``        no progress bar
=====================  ==============================================================================

Outputs are checked before any work starts (:func:`clipag.images.check_output`). Every parser is an
:class:`ArgumentParser`, which never accepts abbreviations: ``--n`` cannot silently mean ``--negative``, and an
option added later cannot make an old command line ambiguous. Only argparse is imported here (``clipag --help``
must not load torch).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from .precision import AMP_MODES

__all__ = ["ArgumentParser", "DefaultsFormatter", "DEVICE_HELP", "positive_int", "add_count", "add_seed", "add_steps",
           "add_output", "add_model", "add_device", "add_amp", "add_frames", "add_threads", "add_quiet", "add_common",
           "apply_threads", "default_output", "slug"]

DEVICE_HELP = "torch device (default: cuda if available, else cpu)"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``allow_abbrev=False``; sub-commands made by ``add_subparsers`` inherit it
    (argparse builds them with the parent's class)."""

    def __init__(self, *args: Any, allow_abbrev: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help only where the help does not state its default already, and never
    "(default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _DeprecatedAlias(argparse.Action):
    """Stores like the option it stands for and says, once, which spelling to use instead."""

    def __init__(self, *args: Any, preferred: str, **kwargs: Any) -> None:
        self.preferred = preferred
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.preferred}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_count(p: argparse.ArgumentParser, what: str = "results") -> None:
    p.add_argument("-n", "--count", type=positive_int, default=1, metavar="N",
                   help=f"{what} per prompt, with seeds SEED, SEED+1, ... (default 1)")
    p.add_argument("--n", dest="count", type=positive_int, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                   action=_DeprecatedAlias, preferred="-n/--count")


def add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="the first seed (default 0); the same seed gives the same "
                                                       "result on the same machine")


def add_steps(p: argparse.ArgumentParser, default: int, source: str = "") -> None:
    p.add_argument("--steps", type=positive_int, default=default,
                   help=f"optimisation steps (default {default}{', ' + source if source else ''})")


def add_output(p: argparse.ArgumentParser, kind: str, default: str = "the prompt as a file name") -> None:
    """``-o/--output``; ``kind`` is the file type (``PNG``, ``SVG``)."""
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help=f"the {kind} to write (default: {default}); several results are numbered FILE-000, "
                        "FILE-001, ... plus FILE-grid.png")


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ViT-B/32", help="the CLIP: registry name, hf-hub: id, folder or checkpoint "
                                                       "file (default ViT-B/32, i.e. CLIPAG)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help=DEVICE_HELP)


def add_amp(p: argparse.ArgumentParser, cpu_note: str = "") -> None:
    p.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="CLIP under autocast (default auto: bf16/fp16 on CUDA, off on CPU" + (f"; {cpu_note}" if
                                                                                             cpu_note else "") + ")")


def add_frames(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", default=None, metavar="GIF",
                   help="also write the optimisation as an animated GIF (numbered like -o)")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: one per core; 1 is several times faster for tiny models such "
                        "as the demo's, and on a busy machine)")


def apply_threads(args: argparse.Namespace) -> None:
    """``torch.set_num_threads(args.threads)`` when ``--threads`` was given (torch is imported only then)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_common(p: argparse.ArgumentParser, *, steps: int, steps_source: str = "", output_kind: str = "PNG",
               output_default: str = "the prompt as a file name", count: str = "results", amp_note: str = "") -> None:
    """All of the convention's options, in one order, so every generator's ``--help`` reads alike."""
    add_model(p)
    add_count(p, count)
    add_seed(p)
    add_steps(p, steps, steps_source)
    add_output(p, output_kind, output_default)
    add_frames(p)
    add_device(p)
    add_amp(p, amp_note)
    add_threads(p)
    add_quiet(p)


def slug(text: str, limit: int = 60, fallback: str = "clipag") -> str:
    """A file name from a prompt: ``"A Red Apple!"`` → ``a-red-apple``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or fallback


def default_output(parts: Sequence[str], suffix: str, fallback: str = "clipag") -> str:
    """The default ``-o``: the slugs of ``parts`` (the prompt; ``style``: the photo's name, then the text)."""
    return "-".join(slug(part, fallback=fallback) for part in parts) + suffix
