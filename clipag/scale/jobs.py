"""What the prompt-file runner needs to know about each command: how an item becomes a session, what it writes,
and what identifies the run (the weights' hash, a prior, a VQGAN).

One small class per command; the runner (:mod:`.runner`) is the same for all four.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .items import Item

__all__ = ["Job", "job_for", "weights_file", "ENGINEERING_FIELDS"]

# Config fields that change how fast or with what side files a run goes, not what it makes: left out of the
# identity an output folder is checked against (each item's record still lists its full config).
ENGINEERING_FIELDS = ("max_views_per_batch", "memory", "compile", "frame_every")


def weights_file(model: str, download_root: str | None = None) -> Path | None:
    """The safetensors file ``clipag.load(model)`` reads its weights from (once it has loaded).

    Registry entries are cached as ``<cache>/NAME/open_clip_model.safetensors``; an open_clip Hub repo is the Hub
    cache's safetensors, or clipag's conversion of its ``.bin``; a transformers-format repo or folder is clipag's
    conversion of it; an open_clip folder holds its weights; a pickled file is read from its conversion.
    (``tests/test_scale_runner.py`` checks each route against the file the loader actually opens.)
    """
    from huggingface_hub import try_to_load_from_cache

    from ..cache import cache_root, converted_path, model_dir
    from ..checkpoints import is_pickled
    from ..hf.read import HF_CONFIG, HF_WEIGHT_NAMES, is_transformers_folder
    from ..hub import CONFIG_NAME, WEIGHTS_NAME
    from ..hub_repos import HUB_WEIGHT_NAMES
    from ..registry import get_entry

    entry = get_entry(model)
    if entry is not None and not entry.hf_repo:
        return model_dir(entry.name, download_root) / WEIGHTS_NAME
    repo = entry.hf_repo if entry is not None else (model.removeprefix("hf-hub:") if model.startswith("hf-hub:")
                                                    else None)
    if repo is not None:
        converted = cache_root(download_root) / "hub" / repo.replace("/", "--")
        if not isinstance(try_to_load_from_cache(repo, CONFIG_NAME), str):  # transformers layout: converted
            config = try_to_load_from_cache(repo, HF_CONFIG)
            return converted / f"{Path(config).parent.name}.transformers.safetensors" if isinstance(config, str) \
                else None
        for name in HUB_WEIGHT_NAMES:
            cached = try_to_load_from_cache(repo, name)
            if isinstance(cached, str):
                return converted / f"{Path(cached).parent.name}.safetensors" if cached.endswith(".bin") \
                    else Path(cached)
        return None
    path = Path(model).expanduser()
    if path.is_dir() and is_transformers_folder(path):
        key = next((path / n for n in HF_WEIGHT_NAMES if (path / n).is_file()), None)
        return converted_path(key, download_root, tag=":transformers") if key is not None else None
    if path.is_dir():
        path = next((path / n for n in HUB_WEIGHT_NAMES if (path / n).is_file()), path / WEIGHTS_NAME)
    if path.is_file() and is_pickled(path):
        return converted_path(path, download_root)
    return path


def _file_identity(path: str | Path | None) -> dict[str, Any] | None:
    from .manifest import file_sha256

    if path is None:
        return None
    path = Path(path)
    return {"name": path.name, "sha256": file_sha256(path)} if path.is_file() else {"name": str(path)}


class Job:
    """The base: ``worker`` is the command's optimiser (Generator, Drawer, VQGANCLIP or Styler), built by the CLI."""

    command = ""
    suffix = ".png"
    text_key = "prompt"

    def __init__(self, args: argparse.Namespace, worker: Any) -> None:
        self.args, self.worker = args, worker
        self._workers: dict[str, Any] = {"{}": worker}

    def config_of(self, worker: Any) -> Any:
        return worker.config

    @property
    def config(self) -> Any:
        return self.config_of(self.worker)

    def worker_for(self, item: Item) -> Any:
        """The optimiser for an item's own settings (built once per distinct setting, sharing the model)."""
        key = item.settings_key()
        if key not in self._workers:
            self._workers[key] = self.worker.with_config(dataclasses.replace(self.config, **item.settings))
        return self._workers[key]

    def steps(self, worker: Any) -> int:
        return self.config_of(worker).steps

    def session(self, worker: Any, item: Item) -> Any:
        return worker.session(item.prompt, item.seed)

    def save(self, result: Any, path: Path) -> list[Path]:
        """Write the item's files (atomically); the first is the record's ``file``."""
        from ..images import save_png

        return [save_png(result.image, path.with_suffix(".png"))]

    def losses(self, result: Any, config: Any) -> tuple[float | None, float | None]:
        """``(best_loss, final_loss)`` of a finished item made under ``config``."""
        values = [v["loss"] if isinstance(v, dict) else v for v in result.losses]
        return (min(values) if values else None), (values[-1] if values else None)

    def identity(self) -> dict[str, Any]:
        """What else, beyond the weights and the config, decides what the run makes."""
        return {}

    def shared_config(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.config)
        return {k: v for k, v in config.items() if k not in ENGINEERING_FIELDS}


class GenerateJob(Job):
    command = "generate"

    def identity(self) -> dict[str, Any]:
        from ..prior import default_prior_path

        args = self.args
        prior = None if args.no_prior else (args.prior or (default_prior_path() if default_prior_path().exists()
                                                            else None))
        return {"prior": _file_identity(prior)}

    def losses(self, result: Any, config: Any) -> tuple[float | None, float | None]:
        """The loss the best canvas is chosen by: the global views' (the total without global views)."""
        tracked = "global" if config.global_views else "loss"
        final = result.losses[-1][tracked] if result.losses else None
        return (result.best_loss if result.best_step >= 0 else None), final


class DrawJob(Job):
    command = "draw"
    suffix = ".svg"

    def session(self, worker: Any, item: Item) -> Any:
        return worker.session(item.prompt, seed=item.seed)

    def save(self, result: Any, path: Path) -> list[Path]:
        from ..images import save_png

        return [Path(result.save_svg(path.with_suffix(".svg"))), save_png(result.image, path.with_suffix(".png"))]

    def losses(self, result: Any, config: Any) -> tuple[float | None, float | None]:
        return (result.best_loss if result.best_step >= 0 else None), (result.losses[-1] if result.losses else None)


class VQGANJob(Job):
    command = "vqgan"

    def config_of(self, worker: Any) -> Any:
        return worker.settings

    def identity(self) -> dict[str, Any]:
        args = self.args
        if args.vqgan_checkpoint:
            return {"vqgan": {"config": _file_identity(args.vqgan_config),
                              "checkpoint": _file_identity(args.vqgan_checkpoint)}}
        from ..adapters.vqgan_clip.registry import cached_vqgan

        cached = cached_vqgan(args.vqgan, getattr(args, "download_root", None))
        return {"vqgan": {"name": args.vqgan, "weights": _file_identity(cached[1] if cached else None)}}


class StyleJob(Job):
    command = "style"
    text_key = "text"

    def identity(self) -> dict[str, Any]:
        from ..adapters.clipstyler.vgg import checkpoint_path

        return {"vgg19": _file_identity(checkpoint_path())}

    def session(self, worker: Any, item: Item) -> Any:
        return worker.session(item.content, item.prompt, item.seed)


_JOBS = {job.command: job for job in (GenerateJob, DrawJob, VQGANJob, StyleJob)}


def job_for(command: str, args: argparse.Namespace, worker: Any) -> Job:
    return _JOBS[command](args, worker)
