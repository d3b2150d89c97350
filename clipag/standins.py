"""Import stand-ins for ``clipag run``: ``import pydiffvg`` (or ``taming.models.vqgan``) finds clipag's.

Each framework's hard dependency that no longer installs (diffvg needs a C++/CUDA build, taming breaks
on torch >= 2) has a pure-PyTorch replacement inside ``clipag.adapters``. An import hook maps the
upstream module names to those replacements. In ``auto`` mode the hook sits *after* the normal path
finders, so a real installation still wins (including one a script appends to ``sys.path`` later, unless
the entry says such copies cannot work: ``late_copies_win=False``); ``on`` puts it first; ``off`` leaves
the import alone. If a real package is used and fails to import, the error says how to use the stand-in.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass, field
from types import ModuleType

__all__ = ["StandIn", "STANDINS", "install", "uninstall", "import_error_hint", "MODES"]

MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class StandIn:
    """One upstream package and the clipag modules that replace it, name for name."""

    name: str                   # what users pass to --standin / --no-standin
    replaces: str               # the upstream project, for messages
    modules: dict[str, str] = field(default_factory=dict)  # upstream module name -> clipag module
    # auto mode, real package not installed: does a copy the script itself adds to sys.path later still win?
    late_copies_win: bool = True
    covers: str = ""  # what the stand-in replaces, for the error an uncovered submodule gets (default: modules)

    def not_covered(self, fullname: str) -> ModuleNotFoundError:
        """The error for ``import NAME.sub`` when ``NAME`` is this stand-in and ``sub`` is not part of it."""
        covers = self.covers or ", ".join(self.modules)
        return ModuleNotFoundError(
            f"No module named {fullname!r}: clipag's stand-in for {self.replaces} covers {covers}. To use the real "
            f"package, install it and run with --no-standin {self.name}", name=fullname)


# One entry per upstream dependency; each adapter adds its own here.
STANDINS: dict[str, StandIn] = {s.name: s for s in (
    StandIn("pydiffvg", "diffvg (BachiLi/diffvg)", {"pydiffvg": "clipag.adapters.clipdraw.pydiffvg"}),
    # kvfrans/clipdraw's predict.py (and other Replicate-era scripts) use cog's pre-0.1 Predictor API
    StandIn("cog", "cog's pre-0.1 predictor API (replicate/cog)", {"cog": "clipag.adapters.cog"}),
    # VQGAN-CLIP appends a cloned taming-transformers/ to sys.path; on torch >= 2 that clone cannot import
    # (torch._six, Lightning 1.x), so in auto mode it does not displace the stand-in.
    StandIn("taming", "taming-transformers (CompVis/taming-transformers)", {
        "taming": "clipag.adapters.vqgan_clip.taming",
        "taming.models": "clipag.adapters.vqgan_clip.taming.models",
        "taming.models.vqgan": "clipag.adapters.vqgan_clip.taming.models.vqgan",
        "taming.models.cond_transformer": "clipag.adapters.vqgan_clip.taming.models.cond_transformer",
        "taming.modules": "clipag.adapters.vqgan_clip.taming.modules",
        "taming.modules.diffusionmodules": "clipag.adapters.vqgan_clip.taming.modules.diffusionmodules",
        "taming.modules.diffusionmodules.model": "clipag.adapters.vqgan_clip.taming.modules.diffusionmodules.model",
        "taming.modules.vqvae": "clipag.adapters.vqgan_clip.taming.modules.vqvae",
        "taming.modules.vqvae.quantize": "clipag.adapters.vqgan_clip.taming.modules.vqvae.quantize",
    }, late_copies_win=False, covers="the VQGAN: taming.models.vqgan (VQModel, GumbelVQ), taming.models."
                                     "cond_transformer (Net2NetTransformer's first stage), taming.modules."
                                     "diffusionmodules.model (Encoder, Decoder) and taming.modules.vqvae.quantize "
                                     "(VectorQuantizer2, GumbelQuantize); not taming's losses (LPIPS, the "
                                     "discriminator), transformers or data"),
)}


class _AliasLoader(importlib.abc.Loader):
    """Loads an upstream name as the already-importable clipag module (the same object, shared state)."""

    def __init__(self, alias: str, target: str) -> None:
        self.alias, self.target = alias, target
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # the import system overwrote it with the alias's spec
        print(f"[clipag] import {self.alias} -> {self.target} (stand-in)", file=sys.stderr)


class _StandInFinder(importlib.abc.MetaPathFinder):
    def __init__(self, standin: StandIn) -> None:
        self.standin, self.mapping = standin, dict(standin.modules)

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.mapping:
            top = sys.modules.get(fullname.split(".")[0])
            if "." in fullname and fullname.split(".")[0] in self.mapping and top is not None \
                    and top.__name__.startswith("clipag."):  # a submodule of the stand-in it does not have
                raise self.standin.not_covered(fullname)
            return None
        target_name = self.mapping[fullname]
        is_package = importlib.util.find_spec(target_name).submodule_search_locations is not None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(fullname, target_name), is_package=is_package)


_installed: list[_StandInFinder] = []
_auto: list[StandIn] = []  # armed in auto mode: a real copy may have been imported instead


def _real_is_importable(standin: StandIn) -> bool:
    top_levels = {name.split(".")[0] for name in standin.modules}
    return any(importlib.util.find_spec(name) is not None for name in top_levels)


def install(modes: dict[str, str] | None = None) -> list[str]:
    """Arm the stand-ins (``modes``: name -> auto/on/off, default auto); returns the lines it printed."""
    modes = modes or {}
    unknown = sorted(set(modes) - set(STANDINS))
    if unknown:
        raise RuntimeError(f"unknown stand-in {', '.join(unknown)}; available stand-ins = {sorted(STANDINS)}")
    uninstall()
    lines = []
    for standin in STANDINS.values():
        mode = modes.get(standin.name, "auto")
        if mode not in MODES:
            raise RuntimeError(f"stand-in mode must be one of {MODES}, not {mode!r}")
        if mode == "off":
            lines.append(f"[clipag] stand-in {standin.name}: off (the real {standin.replaces} is required)")
            continue
        finder = _StandInFinder(standin)
        if mode == "on":
            sys.meta_path.insert(0, finder)
            lines.append(f"[clipag] stand-in {standin.name}: on, replacing {standin.replaces}")
        elif _real_is_importable(standin):
            sys.meta_path.append(finder)
            _auto.append(standin)
            lines.append(f"[clipag] stand-in {standin.name}: auto, {standin.replaces} installed: the real one is used")
        elif standin.late_copies_win:
            sys.meta_path.append(finder)
            _auto.append(standin)
            lines.append(f"[clipag] stand-in {standin.name}: auto, {standin.replaces} not installed: "
                         "clipag's stand-in is used")
        else:
            sys.meta_path.insert(0, finder)
            lines.append(f"[clipag] stand-in {standin.name}: auto, {standin.replaces} not installed: clipag's "
                         f"stand-in is used, also over a copy the script puts on sys.path (such copies do not run "
                         f"on this torch; --no-standin {standin.name} to try one)")
        _installed.append(finder)
    for line in lines:
        print(line, file=sys.stderr)
    return lines


def import_error_hint(error: ImportError) -> str | None:
    """For an import that failed inside a real package used in auto mode: how to use clipag's stand-in."""
    for standin in _auto:
        tops = {name.split(".")[0] for name in standin.modules}
        if any(top in sys.modules and not sys.modules[top].__name__.startswith("clipag.") for top in tops):
            return (f"[clipag] the real {standin.replaces} was imported and failed ({error}); "
                    f"run with --standin {standin.name} to use clipag's stand-in instead")
    return None


def uninstall() -> None:
    """Remove the hooks (modules already imported through them stay imported)."""
    for finder in _installed:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
    _installed.clear()
    _auto.clear()
