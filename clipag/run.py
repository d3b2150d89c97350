"""``clipag run``: execute an unmodified CLIP script with ``clip`` resolving to clipag.

Scripts do ``import clip`` (openai/CLIP) or ``from CLIP import clip`` (VQGAN-CLIP clones the repo as
``CLIP/``). Pre-seeding ``sys.modules`` makes both imports find clipag before any file on disk. The
same run can remap hard-coded CUDA (:mod:`clipag.device_remap`) and arm import stand-ins for
dependencies that no longer build (:mod:`clipag.standins`); both act process-wide, so modules the
script imports (CLIPDraw's drivers import ``predict.py``) are covered too. With transformers installed,
``from_pretrained`` of transformers' CLIP classes loads clipag's model as well (:mod:`clipag.hf.run_hooks`).
"""

from __future__ import annotations

import os
import runpy
import sys
import types
from pathlib import Path
from typing import Any

from . import device_remap, loader, registry, standins, tokenizer, weights

__all__ = ["OPENAI_MODELS", "clip_module", "install_clip_aliases", "install_open_clip_reader", "run_script"]

# openai/CLIP's clip.available_models(), in its order
OPENAI_MODELS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                 "ViT-L/14@336px")


def clip_module(model: str | None = None) -> types.ModuleType:
    """A module with OpenAI ``clip``'s public surface; with ``model``, every ``load`` loads that instead.

    ``load``'s device goes through :func:`device_remap.remap_device`, so under ``--device cpu`` a
    script's ``clip.load(name, 'cuda')`` gets the fp32 CPU model, as ``clip.load(name, 'cpu')`` would.
    """
    module = types.ModuleType("clip", "clipag standing in for OpenAI's clip package")

    def load(name: str, device: Any = None, *args: Any, **kwargs: Any) -> Any:
        if model is not None and name != model:
            print(f"[clipag] clip.load({name!r}) -> {model!r}", file=sys.stderr)
        if device is None:  # OpenAI's default, decided at call time (after any --device patching)
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return loader.load(model or name, device_remap.remap_device(device), *args, **kwargs)

    def available_models() -> list[str]:
        """Under ``--model`` every name loads that model, so every OpenAI name is available (scripts often check
        ``name in clip.available_models()`` before ``clip.load(name)``); otherwise the registry's names."""
        names = registry.available_models()
        if model is None:
            return names
        return [*OPENAI_MODELS, *(name for name in names if name not in OPENAI_MODELS)]

    load.__doc__ = loader.load.__doc__
    module.load, module.tokenize, module.available_models = load, tokenizer.tokenize, available_models
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


def install_open_clip_reader() -> None:
    """Route open_clip's checkpoint reader through clipag's, for the script ``clipag run`` runs.

    CLIPAG's official loading code is ``open_clip.create_model_and_transforms('ViT-B/32', pretrained=FILE)``.
    On torch >= 2.6 open_clip reads FILE with ``weights_only=True``, which refuses CLIPAG's file (numpy numbers
    in its optimizer state); the usual workaround, ``weights_only=False``, would run any code in it. Here the
    file is read by :func:`clipag.weights.read_local_checkpoint` instead: nothing in it runs, numpy numbers are
    accepted, and a pickle is converted once to safetensors in the cache. Outside ``clipag run`` open_clip is
    left alone.
    """
    import open_clip.factory as factory

    if getattr(factory.load_state_dict, "clipag_reader", False):
        return
    original = factory.load_state_dict

    def load_state_dict(checkpoint_path: Any, device: Any = "cpu", weights_only: bool = True) -> Any:
        path = Path(checkpoint_path)
        if path.suffix in (".npz", ".npy") or not path.is_file():  # big_vision weights; open_clip's own errors
            return original(checkpoint_path, device=device, weights_only=weights_only)
        print(f"[clipag] open_clip reads {path} through clipag's safe reader (no code in it runs)", file=sys.stderr)
        state_dict = weights.read_local_checkpoint(path, None).state_dict
        return {k: v.to(device) for k, v in state_dict.items()}

    load_state_dict.clipag_reader = True  # type: ignore[attr-defined]
    factory.load_state_dict = load_state_dict


def run_script(script: str, args: list[str], model: str | None = None, device: str | None = None,
               standin_modes: dict[str, str] | None = None) -> None:
    """Run ``script`` as ``python script args...`` would: ``__main__``, ``sys.argv`` and ``sys.path[0]``.

    ``device`` remaps CUDA requests; ``standin_modes`` maps a stand-in name to auto/on/off (default auto).
    """
    if not os.path.isfile(script):
        raise FileNotFoundError(f"no such script: {script}")
    standins.install(standin_modes)
    if device is not None:
        device_remap.install(device)
    install_clip_aliases(model)
    install_open_clip_reader()
    from .hf.run_hooks import install as install_transformers_hooks

    install_transformers_hooks(model)  # transformers' CLIP from_pretrained -> clipag (when transformers is installed)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except ImportError as e:
        hint = standins.import_error_hint(e)
        if hint:
            e.add_note(hint)
        raise
