"""Import stand-ins for ``clipag run``: ``import pydiffvg`` (or ``taming.models.vqgan``) finds clipag's.

Each framework's hard dependency that no longer installs (diffvg needs a C++/CUDA build, taming breaks
on torch >= 2) has a pure-PyTorch replacement inside ``clipag.adapters``. An import hook maps the
upstream module names to those replacements. In ``auto`` mode the hook sits *after* the normal path
finders, so a real installation still wins (including one a script appends to ``sys.path`` later);
``on`` puts it first; ``off`` leaves the import alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass, field
from types import ModuleType

__all__ = ["StandIn", "STANDINS", "install", "uninstall", "MODES"]

MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class StandIn:
    """One upstream package and the clipag modules that replace it, name for name."""

    name: str                   # what users pass to --standin / --no-standin
    replaces: str               # the upstream project, for messages
    modules: dict[str, str] = field(default_factory=dict)  # upstream module name -> clipag module


# One entry per upstream dependency; each adapter adds its own here.
STANDINS: dict[str, StandIn] = {s.name: s for s in (
    StandIn("pydiffvg", "diffvg (BachiLi/diffvg)", {"pydiffvg": "clipag.adapters.clipdraw.pydiffvg"}),
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
    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.mapping:
            return None
        target_name = self.mapping[fullname]
        is_package = importlib.util.find_spec(target_name).submodule_search_locations is not None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(fullname, target_name), is_package=is_package)


_installed: list[_StandInFinder] = []


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
        finder = _StandInFinder(dict(standin.modules))
        if mode == "on":
            sys.meta_path.insert(0, finder)
            lines.append(f"[clipag] stand-in {standin.name}: on, replacing {standin.replaces}")
        else:
            state = ("installed: the real one is used" if _real_is_importable(standin)
                     else "not installed: clipag's stand-in is used")
            sys.meta_path.append(finder)
            lines.append(f"[clipag] stand-in {standin.name}: auto, {standin.replaces} {state}")
        _installed.append(finder)
    for line in lines:
        print(line, file=sys.stderr)
    return lines


def uninstall() -> None:
    """Remove the hooks (modules already imported through them stay imported)."""
    for finder in _installed:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
    _installed.clear()
