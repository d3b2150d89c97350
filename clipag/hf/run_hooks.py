"""``clipag run`` for transformers scripts: ``from_pretrained`` of transformers' CLIP classes loads clipag's model.

An import hook patches ``from_pretrained`` of ``CLIPModel``, ``CLIPVisionModel(WithProjection)``,
``CLIPTextModel(WithProjection)``, ``CLIPProcessor``, the CLIP image processors and tokenizers as the script imports
them, so nothing is imported early, and without transformers nothing changes. The Auto classes (``AutoConfig``,
``AutoModel``, ``AutoModelForZeroShotImageClassification``, ``AutoProcessor``, ``AutoTokenizer``,
``AutoImageProcessor``, and so ``pipeline()``) are patched too: they read the original id's files before any CLIP
class is called (``AutoImageProcessor`` never calls one), so they would otherwise need the network and hand a
swapped model the original's preprocessing. Which model, by the rule ``clip.load`` names follow:

- OpenAI's Hub ids map like OpenAI's names (``openai/clip-vit-base-patch32`` -> ``ViT-B/32``, CLIPAG;
  ``openai/clip-vit-large-patch14`` -> ``ViT-L/14``, FARE2); ids with no robust counterpart load unchanged.
- ``--model M`` forces ``M`` for every Hub id given to those classes, but not for local folders or ``subfolder=``
  loads (a Stable Diffusion repo's ``text_encoder``), which are not the CLIP the script chose by name. An Auto class
  may be given any model: under ``--model`` it swaps an id that is not OpenAI's only once the id's own
  ``config.json`` says ``model_type: clip``.

The swapped-in model is clipag's transformers export (:func:`clipag.hf.export.export`), made once and cached under
``<cache>/transformers/``; transformers then loads it with the script's own arguments, so what the script gets is a
genuine ``CLIPModel`` of the installed transformers version. stderr says what was swapped and what was not.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["install", "uninstall", "CLASS_NAMES", "AUTO_CLASS_NAMES", "export_folder", "Swapper"]

CLASS_NAMES = ("CLIPModel", "CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPTextModel",
               "CLIPTextModelWithProjection", "CLIPProcessor", "CLIPImageProcessor", "CLIPImageProcessorFast",
               "CLIPImageProcessorPil", "CLIPTokenizer", "CLIPTokenizerFast")
AUTO_CLASS_NAMES = ("AutoConfig", "AutoModel", "AutoModelForZeroShotImageClassification", "AutoProcessor",
                    "AutoTokenizer", "AutoImageProcessor")
_MODULES = frozenset(f"transformers.models.clip.{m}" for m in (
    "modeling_clip", "processing_clip", "image_processing_clip", "image_processing_clip_fast",
    "image_processing_pil_clip", "tokenization_clip", "tokenization_clip_fast")) | frozenset(
    f"transformers.models.auto.{m}" for m in (
        "configuration_auto", "modeling_auto", "processing_auto", "tokenization_auto", "image_processing_auto"))
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("clipag_from_pretrained_depth", default=0)


def _say(message: str) -> None:
    print(f"[clipag] {message}", file=sys.stderr)


def export_folder(name: str, download_root: str | os.PathLike | None = None) -> Path:
    """clipag's transformers export of ``name``, made once into ``<cache>/transformers/`` and reused."""
    from ..hub import cache_root
    from .export import ExportError, export

    path = Path(name).expanduser()
    if path.exists():  # keyed by the file, so an edited checkpoint converts anew
        stat = path.stat()
        key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        slug = "path-" + hashlib.sha256(key.encode()).hexdigest()[:24]
    else:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    folder = cache_root(download_root) / "transformers" / slug
    if (folder / "config.json").is_file() and (folder / "README.md").is_file():
        return folder
    _say(f"converting {name} to a transformers CLIPModel once (cached in {folder})")
    try:
        export(name, folder, "transformers", download_root=download_root, log=_say)
    except (ExportError, OSError):
        if not (folder / "README.md").is_file():  # another process finished the same export first: use it
            raise
    return folder


class Swapper:
    """Decides, for one ``from_pretrained`` call, what transformers loads instead (and says so on stderr)."""

    def __init__(self, model: str | None = None, download_root: str | os.PathLike | None = None,
                 say: Callable[[str], None] = _say) -> None:
        self.model, self.download_root, self.say = model, download_root, say
        self._said: set[str] = set()
        self._clip_ids: dict[tuple[str, Any], bool | None] = {}  # a pipeline asks 4 Auto classes about one id

    def _once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            self.say(message)

    def target(self, cls_name: str, name: Any, kwargs: dict[str, Any]) -> Any:
        """What ``cls_name.from_pretrained(name, **kwargs)`` loads instead of ``name`` (``name`` itself if nothing)."""
        if _depth.get() or not isinstance(name, str | os.PathLike):
            return name  # a load inside a swapped one (CLIPProcessor loading its tokenizer), or not a name
        subfolder = f", subfolder={kwargs['subfolder']!r}" if kwargs.get("subfolder") else ""
        call = f"{cls_name}.from_pretrained({str(name)!r}{subfolder})"
        if os.path.exists(name) or kwargs.get("subfolder"):
            what = "a local folder" if os.path.exists(name) else "a subfolder load"
            self._once(f"{call} loads unchanged: {what} (clipag swaps CLIP ids from the Hub only)")
            return name
        clip_name, reason = self._choose(str(name))
        if clip_name is not None and cls_name in AUTO_CLASS_NAMES:
            is_clip = self._is_clip(str(name), kwargs)
            if not is_clip:
                clip_name = None
                reason = ("its config.json is not a CLIP's" if is_clip is False else
                          "its config.json could not be read to tell whether it is a CLIP")
        if clip_name is None:
            self._once(f"{call} loads unchanged: {reason}")
            return name
        with _nested():  # the export's own transformers loads are not the script's
            folder = export_folder(clip_name, self.download_root)
        self._once(f"{call} -> clipag {clip_name!r} ({folder})")
        return str(folder)

    def _is_clip(self, name: str, kwargs: dict[str, Any]) -> bool | None:
        """Whether the Hub id ``name`` is a CLIP: OpenAI's are; another's ``config.json`` must say so (an Auto
        class takes any model), read once per id and revision. None: the config cannot be read; transformers will
        say why when it tries."""
        from ..registry import OPENAI_HUB_IDS

        if name in OPENAI_HUB_IDS:
            return True
        key = (name, kwargs.get("revision"))
        if key not in self._clip_ids:
            from transformers import PretrainedConfig

            asked = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
            try:
                with _nested():
                    config, _ = PretrainedConfig.get_config_dict(name, **asked)
                self._clip_ids[key] = config.get("model_type") == "clip"
            except (OSError, ValueError):
                self._clip_ids[key] = None
        return self._clip_ids[key]

    def _choose(self, name: str) -> tuple[str | None, str]:
        from ..registry import OPENAI_HUB_IDS, OPENAI_NAMES_WITHOUT_COUNTERPART, get_entry

        if self.model is not None:
            return self.model, ""
        openai_name = OPENAI_HUB_IDS.get(name)
        if openai_name is not None and get_entry(openai_name) is not None:
            return openai_name, ""
        if openai_name in OPENAI_NAMES_WITHOUT_COUNTERPART:
            return None, (f"OpenAI's {openai_name} has no robust counterpart in its embedding space "
                          "(pass --model to force one)")
        return None, "no robust counterpart is known for this id (pass --model to force one)"


@contextlib.contextmanager
def _nested() -> Iterator[None]:
    token = _depth.set(_depth.get() + 1)
    try:
        yield
    finally:
        _depth.reset(token)


def _patch_class(cls: type, swapper: Swapper) -> None:
    if "_clipag_original_from_pretrained" in cls.__dict__:
        return
    original = cls.from_pretrained.__func__  # type: ignore[attr-defined]

    @functools.wraps(original)
    def from_pretrained(klass: type, *args: Any, **kwargs: Any) -> Any:
        key = "pretrained_model_name_or_path"
        name = args[0] if args else kwargs.get(key)
        target = swapper.target(klass.__name__, name, kwargs)
        if target is not name:
            args, kwargs = ((target, *args[1:]), kwargs) if args else (args, {**kwargs, key: target})
            # A config fetched for the original id (AutoModel passes one) would rebuild the swapped weights with
            # the original's activation and sizes; the swapped folder's own config.json is the right one.
            kwargs.pop("config", None)
        with _nested():
            return original(klass, *args, **kwargs)

    cls._clipag_original_from_pretrained = cls.__dict__.get("from_pretrained")  # type: ignore[attr-defined]
    cls.from_pretrained = classmethod(from_pretrained)  # type: ignore[assignment]


def _patch_module(module: Any, swapper: Swapper) -> None:
    for name in CLASS_NAMES + AUTO_CLASS_NAMES:
        cls = module.__dict__.get(name)
        if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
            _patch_class(cls, swapper)


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, swapper: Swapper) -> None:
        self.loader, self.swapper = loader, swapper

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        _patch_module(module, self.swapper)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds transformers' CLIP modules as usual and patches their classes right after they execute."""

    def __init__(self, swapper: Swapper) -> None:
        self.swapper = swapper

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, self.swapper)
        return spec


def install(model: str | None = None, download_root: str | os.PathLike | None = None) -> bool:
    """Arm the hook for this process; False (and nothing changes) when transformers is not installed."""
    if importlib.util.find_spec("transformers") is None:
        return False
    uninstall()
    swapper = Swapper(model, download_root)
    for name in _MODULES & set(sys.modules):  # already imported: patch now
        _patch_module(sys.modules[name], swapper)
    sys.meta_path.insert(0, _PatchOnImport(swapper))
    return True


def uninstall() -> None:
    """Remove the hook and restore every patched ``from_pretrained`` (for tests)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PatchOnImport)]
    for name in _MODULES & set(sys.modules):
        for cls_name in CLASS_NAMES + AUTO_CLASS_NAMES:
            cls = sys.modules[name].__dict__.get(cls_name)
            if isinstance(cls, type) and "_clipag_original_from_pretrained" in cls.__dict__:
                original = cls.__dict__["_clipag_original_from_pretrained"]
                if original is None:
                    delattr(cls, "from_pretrained")
                else:
                    cls.from_pretrained = original
                delattr(cls, "_clipag_original_from_pretrained")
