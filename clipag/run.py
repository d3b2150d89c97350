"""``clipag run``: execute an unmodified CLIP script with ``clip`` resolving to clipag.

Scripts do ``import clip`` (openai/CLIP) or ``from CLIP import clip`` (VQGAN-CLIP clones the repo as
``CLIP/``). Pre-seeding ``sys.modules`` makes both imports find clipag before any file on disk.
"""

from __future__ import annotations

import os
import runpy
import sys
import types
from typing import Any

from . import loader, registry, tokenizer

__all__ = ["clip_module", "install_clip_aliases", "run_script"]


def clip_module(model: str | None = None) -> types.ModuleType:
    """A module with OpenAI ``clip``'s public surface; with ``model``, every ``load`` loads that instead."""
    module = types.ModuleType("clip", "clipag standing in for OpenAI's clip package")

    def load(name: str, *args: Any, **kwargs: Any) -> Any:
        if model is not None and name != model:
            print(f"[clipag] clip.load({name!r}) -> {model!r}", file=sys.stderr)
        return loader.load(model or name, *args, **kwargs)

    load.__doc__ = loader.load.__doc__
    module.load, module.tokenize, module.available_models = load, tokenizer.tokenize, registry.available_models
    module.__all__ = ["load", "tokenize", "available_models"]
    module.__path__ = []  # a package, so `import clip.clip` and `from clip import clip` work
    module.clip = module
    return module


def install_clip_aliases(model: str | None = None) -> types.ModuleType:
    """Make ``clip``, ``clip.clip``, ``clip.simple_tokenizer``, ``CLIP`` and ``CLIP.clip`` import clipag."""
    module = clip_module(model)
    simple_tokenizer = types.ModuleType("clip.simple_tokenizer")
    simple_tokenizer.SimpleTokenizer = tokenizer.OpenAITokenizer
    module.simple_tokenizer = simple_tokenizer
    package = types.ModuleType("CLIP", "clipag standing in for a cloned openai/CLIP folder")
    package.__path__ = []
    package.clip = module
    sys.modules.update({"clip": module, "clip.clip": module, "clip.simple_tokenizer": simple_tokenizer,
                        "CLIP": package, "CLIP.clip": module})
    return module


def run_script(script: str, args: list[str], model: str | None = None) -> None:
    """Run ``script`` as ``python script args...`` would: ``__main__``, ``sys.argv`` and ``sys.path[0]``."""
    if not os.path.isfile(script):
        raise FileNotFoundError(f"no such script: {script}")
    install_clip_aliases(model)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
