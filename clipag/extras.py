"""Optional dependencies: which extra brings which module, and the message a user gets when one is missing.

Every command that needs an extra calls :func:`require` before it does any work, so a plain ``pip install -e .``
gets the install command to run instead of a ``ModuleNotFoundError`` traceback; code paths that import an extra
lazily go through :func:`import_module`, so the Python API says the same. clipag is installed from its source
folder (it is not on PyPI), so the message gives the editable and the regular spelling of that install.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtra", "require", "import_module", "extra_for", "install_hint"]

# extra -> the modules clipag itself imports from it (import names, not distribution names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "clipdraw": ("kornia",),
    "clipstyler": ("kornia",),
    "vqgan-clip": ("kornia", "yaml"),
    "train": ("webdataset", "tensorboard", "datasets"),
}


class MissingExtra(ModuleNotFoundError):
    """A module of an optional extra is not installed; the message says which extra and how to install it."""


def install_hint(extra: str) -> str:
    return (f'install it from your clipag folder:\n    pip install -e ".[{extra}]"     (editable, as the README '
            f'installs)\n    pip install ".[{extra}]"        (a regular install)')


def extra_for(module: str) -> str | None:
    """The extra that provides top-level ``module`` (the first one listing it), or None."""
    top = module.split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def _missing(package: str, extra: str, what: str, error: ImportError) -> MissingExtra:
    reason = "is not installed" if isinstance(error, ModuleNotFoundError) else f"cannot be imported ({error})"
    return MissingExtra(f"{what} needs {package}, from clipag's [{extra}] extra, and it {reason}; "
                        f"{install_hint(extra)}", name=package)


def import_module(module: str, extra: str, what: str | None = None, package: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtra` naming ``extra`` (``what`` needs it) and
    ``package`` (default: ``module``'s top level; ``torch.utils.tensorboard`` needs ``tensorboard``)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise _missing(package or module.split(".")[0], extra, what or "this", e) from e


def require(extra: str, command: str, modules: Sequence[str] | None = None) -> None:
    """Raise :class:`MissingExtra` unless ``modules`` (default: all of ``extra``'s) import; ``command`` is what the
    user ran (``clipag draw``). Importing, not just finding, also catches a broken install."""
    for module in modules if modules is not None else EXTRAS[extra]:
        import_module(module, extra, command)
