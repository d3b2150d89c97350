"""The start-image prior: one Gaussian per class over tiny (16×16×3) images, as the CLIPAG notebook fits.

The notebook fits ``N(μ_c, Σ_c + 1e-4·I)`` per class of Tiny-ImageNet (pixels mapped to [-1, 1]), samples
from it, upsamples the samples and starts generation from the one CLIP finds most similar to the prompt.

Storage. ``Σ_c`` is the empirical covariance of ``n_c`` images, so ``Σ_c = F_cᵀF_c`` with ``F_c`` at most
``min(n_c, d)`` rows (``d = 768``); we store ``F_c`` (from an SVD, near-zero directions dropped) rather than a
``d×d`` Cholesky factor: with Tiny-ImageNet's 50 images per class that is 49 rows instead of a 768×768
triangle (30 MB for 200 classes instead of 236 MB). Sampling ``μ + F_cᵀz + √jitter·w`` with ``z, w`` standard
normal draws from exactly ``N(μ_c, Σ_c + jitter·I)``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["Prior", "build_prior", "default_prior_path", "fit_gaussians"]

FORMAT = "clipag-prior"
VERSION = "1"


def default_prior_path() -> Path:
    """Where ``clipag prior build`` writes by default, and where ``generate`` looks for a prior."""
    from .hub import cache_root

    return cache_root() / "priors" / "default.safetensors"


@dataclass
class Prior:
    """Per-class Gaussians over ``resolution``² RGB images in [-1, 1] (the notebook's space)."""

    mean: torch.Tensor  # (C, d)
    factor: torch.Tensor  # (C, k, d): Σ_c = factor[c]ᵀ factor[c]; unused rows are zero
    classes: list[str]
    counts: list[int]
    resolution: int = 16
    jitter: float = 1e-4
    source: str = ""

    @property
    def dim(self) -> int:
        return 3 * self.resolution ** 2

    def __len__(self) -> int:
        return len(self.classes)

    def covariance(self, c: int) -> torch.Tensor:
        """``Σ_c + jitter·I`` (the distribution :meth:`sample` draws from), for checks."""
        f = self.factor[c].double()
        return f.T @ f + self.jitter * torch.eye(self.dim, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None, start: int = 0) -> torch.Tensor:
        """``n`` images in [0, 1], ``(n, 3, r, r)``, cycling through all classes (sample ``i`` is from class
        ``(start + i) % C``), so every class is represented equally — unlike the notebook's indexing, which
        reached only the first 20 of 200 classes."""
        idx = (torch.arange(n) + start) % len(self.classes)
        z = torch.randn(n, 1, self.factor.shape[1], generator=generator)
        w = torch.randn(n, self.dim, generator=generator)
        x = self.mean[idx] + torch.bmm(z, self.factor[idx]).squeeze(1) + math.sqrt(self.jitter) * w
        return ((x + 1) / 2).clamp(0, 1).reshape(n, 3, self.resolution, self.resolution)

    def best_match(self, score: Callable[[torch.Tensor], torch.Tensor], n: int, generator: torch.Generator | None,
                   batch: int = 100) -> torch.Tensor:
        """The one of ``n`` samples (``(1, 3, r, r)``) that ``score`` (images → similarity to the prompt) ranks
        highest. Samples are drawn and scored in batches so memory stays flat for any ``n``."""
        best, best_score = None, -math.inf
        for start in range(0, n, batch):
            samples = self.sample(min(batch, n - start), generator, start=start)
            scores = score(samples)
            i = int(scores.argmax())
            if float(scores[i]) > best_score:
                best, best_score = samples[i:i + 1], float(scores[i])
        assert best is not None, "n must be positive"
        return best

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"format": FORMAT, "version": VERSION, "resolution": str(self.resolution),
                    "jitter": repr(self.jitter), "space": "[-1,1]", "classes": json.dumps(self.classes),
                    "source": self.source}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"mean": self.mean.float().contiguous(), "factor": self.factor.float().contiguous(),
                   "counts": torch.tensor(self.counts, dtype=torch.int64)}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Prior:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a clipag prior (build one with `clipag prior build`)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        return cls(mean=tensors["mean"], factor=tensors["factor"], classes=json.loads(meta["classes"]),
                   counts=tensors["counts"].tolist(), resolution=int(meta["resolution"]),
                   jitter=float(meta["jitter"]), source=meta.get("source", ""))


def fit_gaussians(groups: dict[str, torch.Tensor], resolution: int, jitter: float = 1e-4, source: str = "") -> Prior:
    """Fit one Gaussian per class from ``{class: (n, 3, r, r) images in [0, 1]}``."""
    names = [name for name, x in groups.items() if len(x)]
    if not names:
        raise ValueError("no images to fit a prior on")
    means, factors = [], []
    for name in names:
        x = groups[name].double().reshape(len(groups[name]), -1) * 2 - 1  # the notebook's [-1, 1]
        mean = x.mean(dim=0)
        centred = (x - mean) / math.sqrt(len(x))  # Σ = centredᵀ centred (the notebook's biased estimate)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        keep = s > s.max().clamp(min=1e-12) * 1e-6
        means.append(mean.float())
        factors.append((s[keep, None] * vh[keep]).float())
    k = max(1, max(len(f) for f in factors))
    padded = torch.zeros(len(names), k, 3 * resolution ** 2)
    for i, f in enumerate(factors):
        padded[i, :len(f)] = f
    return Prior(mean=torch.stack(means), factor=padded, classes=names, counts=[len(groups[n]) for n in names],
                 resolution=resolution, jitter=jitter, source=source)


def _shrink(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB, shorter side to ``resolution`` (antialiased), centre crop: ``(3, r, r)`` in [0, 1]."""
    import torchvision.transforms.functional as TF

    image = TF.center_crop(TF.resize(image.convert("RGB"), resolution), [resolution, resolution])
    return TF.to_tensor(image)


def _folder_items(folder: Path) -> Iterator[tuple[str, Image.Image]]:
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders (expected FOLDER/CLASS/IMAGE files)")
    for cls in classes:
        files = sorted(p for p in cls.rglob("*") if p.suffix.lower() in extensions and p.is_file())
        if not files:
            warnings.warn(f"{cls}: no images, class skipped", stacklevel=3)
        for file in files:
            with Image.open(file) as image:
                image.load()
                yield cls.name, image


def _dataset_items(name: str, split: str | None, image_column: str | None,
                   label_column: str | None) -> tuple[Iterable[tuple[str, Image.Image]], int]:
    from .extras import import_module

    datasets = import_module("datasets", "train", "building a prior from a Hugging Face dataset")
    if split is None:
        names = datasets.get_dataset_split_names(name)
        split = next((s for s in ("valid", "validation", "test", "train") if s in names), names[0])
    ds = datasets.load_dataset(name, split=split)
    features = ds.features
    image_column = image_column or next((k for k, v in features.items() if isinstance(v, datasets.Image)), "image")
    label_column = label_column or next((k for k, v in features.items() if isinstance(v, datasets.ClassLabel)),
                                        "label")
    for column in (image_column, label_column):
        if column not in features:
            raise ValueError(f"dataset {name} has no column {column!r} (columns: {list(features)}); "
                             "choose with --image-column/--label-column")
    label_feature = features[label_column]
    names_of = label_feature.int2str if isinstance(label_feature, datasets.ClassLabel) else str
    rows = ds.select_columns([image_column, label_column])
    return ((names_of(row[label_column]), row[image_column]) for row in rows), len(ds)


def build_prior(source: str | os.PathLike, *, resolution: int = 16, jitter: float = 1e-4, split: str | None = None,
                image_column: str | None = None, label_column: str | None = None,
                max_per_class: int | None = None, progress: bool = False) -> Prior:
    """Fit a prior on an image folder (``SOURCE/CLASS/*.jpg``) or a Hugging Face dataset id.

    Grey-scale and RGBA images are converted to RGB (the notebook silently dropped non-RGB images).
    """
    from tqdm.auto import tqdm

    path = Path(source)
    total: int | None = None
    if path.is_dir():
        items: Iterable[tuple[str, Any]] = _folder_items(path)
    elif path.exists():
        raise ValueError(f"{source} is a file; give a folder of class sub-folders or a dataset id")
    else:
        items, total = _dataset_items(str(source), split, image_column, label_column)
    groups: dict[str, list[torch.Tensor]] = {}
    for label, image in tqdm(items, total=total, desc="reading images", unit="img", disable=not progress):
        bucket = groups.setdefault(label, [])
        if max_per_class is None or len(bucket) < max_per_class:
            bucket.append(_shrink(image, resolution))
    return fit_gaussians({k: torch.stack(v) for k, v in groups.items()}, resolution, jitter, source=str(source))


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Prior samples to canvas size (bilinear, as the notebook's ``transforms.Resize``)."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
