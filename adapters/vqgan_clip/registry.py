"""The VQGANs VQGAN-CLIP's ``download_models.sh`` offers, fetched once into clipag's cache as safetensors.

Each name gets ``<cache>/vqgan/<name>/{config.yaml, model.safetensors, source.json}``. Downloads go through
:func:`clipag.hub.fetch_and_convert` (a folder lock, resume, progress, size/sha256 checks on disk, atomic
rename). No publisher states a checksum for these files, so the first download records the sha256 (trust on
first use) and a later download must match it. The Lightning ``.ckpt`` is read once without executing its
pickle, its VQGAN weights are kept, and it is deleted. The COCO, FacesHQ and S-FLCKR releases are transformer
checkpoints: only their first stage (the VQGAN) is kept.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from clipag.cache import atomic_path, cache_lock, cache_root, read_json, write_json_atomic
from clipag.hub import OfflineError, download_url, fetch_and_convert, is_offline, sha256_of

__all__ = ["VQGANEntry", "VQGANS", "vqgan_dir", "fetch_vqgan", "import_vqgan", "cached_vqgan", "unknown_vqgan_error"]

_HEIBOX = "https://heibox.uni-heidelberg.de/d/{}/files/?p={}&dl=1"


@dataclass(frozen=True)
class VQGANEntry:
    name: str
    description: str
    config_url: str
    checkpoint_url: str
    approx_size: str  # as download_models.sh states it; no exact size or checksum is published
    checkpoint_size: int | None = None
    checkpoint_sha256: str | None = None


VQGANS: dict[str, VQGANEntry] = {e.name: e for e in (
    VQGANEntry("vqgan_imagenet_f16_1024", "ImageNet, f16, 1024 codes (taming-transformers)",
               _HEIBOX.format("8088892a516d4e3baf92", "%2Fconfigs%2Fmodel.yaml"),
               _HEIBOX.format("8088892a516d4e3baf92", "%2Fckpts%2Flast.ckpt"), "958 MB"),
    VQGANEntry("vqgan_imagenet_f16_16384", "ImageNet, f16, 16384 codes (taming-transformers; VQGAN-CLIP's default)",
               _HEIBOX.format("a7530b09fed84f80a887", "%2Fconfigs%2Fmodel.yaml"),
               _HEIBOX.format("a7530b09fed84f80a887", "%2Fckpts%2Flast.ckpt"), "980 MB"),
    VQGANEntry("vqgan_gumbel_f8_8192", "Open Images, f8, 8192 codes, Gumbel quantizer (was openimages_f16_8192)",
               _HEIBOX.format("2e5662443a6b4307b470", "%2Fconfigs%2Fmodel.yaml"),
               _HEIBOX.format("2e5662443a6b4307b470", "%2Fckpts%2Flast.ckpt"), "376 MB"),
    VQGANEntry("coco", "COCO scene transformer; its first stage, f16, 8192 codes",
               "https://dl.nmkd.de/ai/clip/coco/coco.yaml", "https://dl.nmkd.de/ai/clip/coco/coco.ckpt", "8.4 GB"),
    VQGANEntry("faceshq", "FacesHQ transformer; its first stage, f16, 1024 codes",
               "https://drive.google.com/uc?export=download&id=1fHwGx_hnBtC8nsq7hesJvs-Klv-P0gzT",
               "https://app.koofr.net/content/links/a04deec9-0c59-4673-8b37-3d696fe63a5d/files/get/last.ckpt?path="
               "%2F2020-11-13T21-41-45_faceshq_transformer%2Fcheckpoints%2Flast.ckpt", "unstated"),
    VQGANEntry("wikiart_16384", "WikiArt, f16, 16384 codes (EleutherAI)",
               "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.yaml",
               "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.ckpt", "1 GB"),
    VQGANEntry("sflckr", "S-FLCKR landscape transformer; its first stage",
               _HEIBOX.format("73487ab6e5314cb5adba", "%2Fconfigs%2F2020-11-09T13-31-51-project.yaml"),
               _HEIBOX.format("73487ab6e5314cb5adba", "%2Fcheckpoints%2Flast.ckpt"), "unstated"),
)}

CONFIG_FILE, WEIGHTS_FILE, SOURCE_FILE = "config.yaml", "model.safetensors", "source.json"


def unknown_vqgan_error(name: str) -> RuntimeError:
    return RuntimeError(f"VQGAN {name} not found; available VQGANs = {sorted(VQGANS)} "
                        "(or pass --vqgan-config YAML --vqgan-checkpoint CKPT)")


def vqgan_dir(name: str, download_root: str | os.PathLike | None = None) -> Path:
    return cache_root(download_root) / "vqgan" / name


def cached_vqgan(name: str, download_root: str | os.PathLike | None = None) -> tuple[Path, Path] | None:
    """``(config, weights)`` of a complete cache folder (the recorded size must match), else None."""
    folder = vqgan_dir(name, download_root)
    config, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    expected = read_json(folder / SOURCE_FILE).get("safetensors_size")
    if config.is_file() and weights.is_file() and weights.stat().st_size == expected:
        return config, weights
    return None


def _how_to_get(entry: VQGANEntry, folder: Path) -> str:
    return (f"On a machine with internet run `clipag download {entry.name}` and copy {folder} here, or download "
            f"{entry.checkpoint_url} (and its config {entry.config_url}) yourself and run "
            f"`clipag import {entry.name} last.ckpt --config model.yaml`.")


def import_vqgan(name: str, checkpoint: str | os.PathLike, config: str | os.PathLike | None = None,
                 download_root: str | os.PathLike | None = None, known_sha256: str | None = None) -> Path:
    """Verify a downloaded ``.ckpt`` (+ its yaml), keep its VQGAN weights as safetensors in the cache folder.

    Under the folder's inter-process lock; ``source.json`` is written last, so a folder is complete or ignored.
    """
    from clipag.checkpoints import CheckpointError

    from .checkpoint import load_model_weights, read_model_tensors, summarize_keys
    from .vqgan import build_from_config, load_config

    entry = VQGANS.get(name)
    if entry is None:
        raise unknown_vqgan_error(name)
    folder = vqgan_dir(name, download_root)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such file to import as {name}")
    with cache_lock(folder, f"importing {name}"):
        if config is not None and Path(config).resolve() != (folder / CONFIG_FILE).resolve():
            with atomic_path(folder / CONFIG_FILE) as tmp:
                shutil.copyfile(config, tmp)
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"no config for {name}: pass its yaml ({entry.config_url}) with --config")
        source = read_json(folder / SOURCE_FILE)
        size = checkpoint.stat().st_size
        if entry.checkpoint_size is not None and size != entry.checkpoint_size:
            raise CheckpointError(f"{checkpoint}: {size} bytes, but {name} is {entry.checkpoint_size}: truncated or "
                                  "a different file")
        sha = known_sha256 or sha256_of(checkpoint, progress=True)
        expected = entry.checkpoint_sha256 or source.get("sha256")
        if expected and sha != expected:
            raise CheckpointError(f"{checkpoint}: sha256 {sha} differs from {expected} "
                                  f"({'pinned' if entry.checkpoint_sha256 else 'recorded at first download'})")
        model = build_from_config(load_config(folder / CONFIG_FILE)["model"])
        weights = folder / WEIGHTS_FILE
        _, report = read_model_tensors(checkpoint, set(model.state_dict()), download_root, cache_to=weights)
        try:
            load_model_weights(model, weights)  # proves the kept tensors fit the config before the folder is complete
        except CheckpointError:
            weights.unlink(missing_ok=True)
            raise
        write_json_atomic(folder / SOURCE_FILE, {
            "name": name, "url": entry.checkpoint_url, "config_url": entry.config_url, "size": size, "sha256": sha,
            "sha256_pinned": bool(entry.checkpoint_sha256), "config_sha256": sha256_of(folder / CONFIG_FILE),
            "safetensors_size": weights.stat().st_size, "ignored": summarize_keys(report.get("ignored", [])),
        })
    return folder


def fetch_vqgan(name: str, download_root: str | os.PathLike | None = None, progress: bool = True) -> tuple[Path, Path]:
    """``(config.yaml, model.safetensors)`` of a registry VQGAN, downloading and converting it on first use.

    Any number of processes may ask at once: one downloads and converts under the folder's lock, the others wait.
    A verified download whose conversion was interrupted (killed, disk full) is converted without downloading it
    again (:func:`clipag.hub.fetch_and_convert`).
    """
    entry = VQGANS.get(name)
    if entry is None:
        raise unknown_vqgan_error(name)
    cached = cached_vqgan(name, download_root)
    if cached is not None:
        return cached
    folder = vqgan_dir(name, download_root)
    if is_offline():
        raise OfflineError(f"VQGAN {name} is not in the cache ({folder}) and offline mode is on "
                           "(HF_HUB_OFFLINE/CLIPAG_OFFLINE). " + _how_to_get(entry, folder))
    done = lambda: cached_vqgan(name, download_root) is not None  # noqa: E731
    with cache_lock(folder, f"downloading VQGAN {name}"):
        if not done():  # another process may have finished while we waited
            source = read_json(folder / SOURCE_FILE)
            download_url(entry.config_url, folder / CONFIG_FILE, sha256=source.get("config_sha256"),
                         progress=progress, advice=_how_to_get(entry, folder), lock=False)
        fetch_and_convert(folder, entry.checkpoint_url, "last.ckpt", size=entry.checkpoint_size,
                          sha256=entry.checkpoint_sha256, what=f"VQGAN {name}", progress=progress,
                          advice=_how_to_get(entry, folder), done=done,
                          convert=lambda ckpt, sha: import_vqgan(name, ckpt, download_root=download_root,
                                                                 known_sha256=sha))
    result = cached_vqgan(name, download_root)
    if result is None:
        raise RuntimeError(f"{folder}: conversion finished but the cache folder is incomplete")
    return result
