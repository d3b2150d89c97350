"""``python -m clipag.eval``: zero-shot accuracy, clean and under PGD, on labelled images.

The data is read as ``clipag.finetune`` reads it (``clipag.datasets``): an image folder with class names, a
CSV/TSV with a label column, webdataset shards with a class field, or the synthetic source.

Models see pixels in [0, 1] and normalise inside the graph (:class:`PixelCLIP`), so ε is measured in
pixel space exactly as in training (``clipag.finetune`` uses the same wrapper and the same attack).

    python -m clipag.eval --model runs/x/export --data imagenet-val/ --norm linf --epsilon 2/255 4/255
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import datasets
from .attacks import NORMS, pgd
from .cli_options import DEVICE_HELP, ArgumentParser, DefaultsFormatter
from .extras import MissingExtra, require
from .tokenizer import tokenize

__all__ = ["PixelCLIP", "zero_shot_weights", "evaluate", "load_templates", "eval_batches",
           "parse_epsilon", "main"]


def parse_epsilon(text: str) -> float:
    """``"4/255"`` or ``"0.5"``: attack budgets are usually written as fractions of 255."""
    return float(Fraction(text))


class PixelCLIP(torch.nn.Module):
    """A CLIP whose image input is pixels in [0, 1]: mean/std normalisation is part of the graph.

    ``forward(pixels, tokens=None) -> (image_features, text_features or None, logit_scale.exp())`` is
    the one call DDP wraps in training; ``encode_image``/``encode_text`` serve attacks and evaluation.
    """

    def __init__(self, model: torch.nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        """``mean``/``std`` default to the model's own preprocess config (:func:`clipag.model.image_normalization`)."""
        from .model import image_normalization

        super().__init__()
        self.model = model
        model_mean, model_std = image_normalization(model)
        mean = model_mean if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = model_std if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image((pixels - self.mean) / self.std)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor | None = None) -> \
            tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        text = self.encode_text(tokens) if tokens is not None else None
        return self.encode_image(pixels), text, self.model.logit_scale.exp()


def load_templates(spec: str) -> list[str]:
    """``simple`` (open_clip's 7 ImageNet templates), ``openai`` (OpenAI's 80), a file (one per line, with
    ``{}``), or a single template containing ``{}``."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if spec in ("simple", "openai"):
        fns = SIMPLE_IMAGENET_TEMPLATES if spec == "simple" else OPENAI_IMAGENET_TEMPLATES
        return [fn("{}") for fn in fns]
    if "{}" in spec and not os.path.isfile(spec):
        return [spec]
    templates = [line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"{spec}: every template line needs a '{{}}' for the class name")
    return templates


def _collate(items: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    kept = [x for x in items if x is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(items)
    return torch.stack([x[0] for x in kept]), torch.tensor([x[1] for x in kept]), len(items) - len(kept)


def _first(batches: Iterable[tuple[torch.Tensor, torch.Tensor, int]], n: int) -> \
        Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """The first ``n`` samples of a stream of batches (webdataset shards have no random access)."""
    seen = 0
    for pixels, labels, skipped in batches:
        take = min(len(labels), n - seen)
        yield pixels[:take], labels[:take], skipped
        seen += take + skipped
        if seen >= n:
            return


def eval_batches(data: str, image_size: int, batch_size: int, samples: int | None = None, seed: int = 0,
                 workers: int = 0, classnames: str | None = None, synthetic_classes: int = 10, *,
                 dataset_type: str = "auto", csv_separator: str | None = None, csv_img_key: str = "filepath",
                 csv_label_key: str = "label", image_key: str = "jpg;jpeg;png;webp", label_key: str = "cls") -> \
        tuple[Iterable[tuple[torch.Tensor, torch.Tensor, int]], list[str], int | None]:
    """``(batches of (pixels, labels, skipped), classnames, sample count)`` for ``synthetic``, an image folder,
    a CSV/TSV with a label column, or webdataset shards with a class field (count ``None`` if unknown).

    ``samples`` takes a fixed, seeded random subset (the first ``samples`` of a webdataset stream), so
    evaluations during training are comparable. Unreadable images are skipped and reported as in training.
    """
    kind = datasets.guess_dataset_type(data) if dataset_type == "auto" else dataset_type
    if kind == "synthetic":
        from .finetune.synthetic import EVAL_INDEX_OFFSET, SyntheticImages

        source = SyntheticImages(synthetic_classes, image_size)
        n = samples or 1000

        def synthetic() -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
            for start in range(0, n, batch_size):
                items = [source.item(EVAL_INDEX_OFFSET + i) for i in range(start, min(n, start + batch_size))]
                yield torch.stack([x[0] for x in items]), torch.tensor([x[2] for x in items]), 0

        return synthetic(), source.classnames, n
    if kind == "webdataset":
        if not classnames:
            raise ValueError("webdataset evaluation needs --classnames FILE: the class field holds indices or names "
                             "of those classes")
        names = datasets.read_classnames(classnames)
        shards = datasets.LabelledShards(data, image_size, image_key, label_key, names)
        loader = torch.utils.data.DataLoader(shards, batch_size=batch_size, collate_fn=_collate,
                                             num_workers=min(workers, len(shards.shards)))
        return (_first(loader, samples) if samples else loader), names, samples
    if kind == "csv":
        dataset, names = datasets.LabelledImages.from_csv(data, image_size, csv_separator, csv_img_key, csv_label_key,
                                                          classnames)
    elif kind == "folder":
        folder, names = datasets.read_image_folder(data, classnames)
        dataset = datasets.LabelledImages(folder, image_size)
    else:
        raise ValueError(f"unknown dataset type {kind!r}; one of {', '.join(datasets.DATASET_TYPES)}")
    if samples is not None and samples < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:samples]
        dataset.samples = [dataset.samples[i] for i in sorted(order.tolist())]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    return loader, names, len(dataset)


@torch.no_grad()
def zero_shot_weights(model: PixelCLIP, classnames: Sequence[str], templates: Sequence[str],
                      device: torch.device | str, batch_size: int = 256) -> torch.Tensor:
    """Class embeddings (C × D): each class's normalised prompt embeddings, averaged over templates."""
    context = getattr(model.model, "context_length", 77)
    prompts = [t.format(name) for name in classnames for t in templates]
    features = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenize(prompts[i:i + batch_size], context_length=context, truncate=True).to(device)
        features.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_class = torch.cat(features).view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def evaluate(model: PixelCLIP, batches: Iterable[tuple[torch.Tensor, torch.Tensor, int]], weights: torch.Tensor,
             norm: str = "linf", epsilons: Sequence[float] = (), steps: int = 10, step_size: float | None = None,
             device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None, seed: int = 0,
             total: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Zero-shot accuracy clean and under PGD on the cross-entropy of the zero-shot logits, per ε.

    ``attack_success_rate`` is the share of clean-correct images the attack makes wrong.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    scale = model.model.logit_scale.exp().float().detach()
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    generator = torch.Generator(device).manual_seed(seed)

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        with autocast:
            features = model.encode_image(pixels)
        return scale * F.normalize(features.float(), dim=-1) @ weights.T

    counts = {"n": 0, "skipped": 0, "clean": 0, **{f"robust_{e}": 0 for e in epsilons},
              **{f"flipped_{e}": 0 for e in epsilons}}
    bar = tqdm(total=total, desc="eval", unit="img", disable=not progress, leave=False)
    for pixels, labels, skipped in batches:
        counts["skipped"] += skipped
        bar.update(len(labels) + skipped)
        if not len(labels):
            continue
        pixels, labels = pixels.to(device), labels.to(device)
        with torch.no_grad():
            clean_ok = logits(pixels).argmax(-1) == labels
        counts["n"] += len(labels)
        counts["clean"] += int(clean_ok.sum())
        for eps in epsilons:
            adv = pgd(lambda x, y=labels: F.cross_entropy(logits(x), y, reduction="sum"), pixels, norm=norm,
                      epsilon=eps, steps=steps, generator=generator,
                      step_size=None if step_size is None else step_size * eps / max(epsilons))
            with torch.no_grad():
                ok = logits(adv).argmax(-1) == labels
            counts[f"robust_{eps}"] += int(ok.sum())
            counts[f"flipped_{eps}"] += int((clean_ok & ~ok).sum())
    bar.close()
    model.train(was_training)
    n = max(counts["n"], 1)
    result: dict[str, Any] = {"samples": counts["n"], "skipped": counts["skipped"], "clean_acc": counts["clean"] / n}
    for eps in epsilons:
        key = f"{norm}_{_eps_name(eps)}"
        result[f"robust_acc/{key}"] = counts[f"robust_{eps}"] / n
        result[f"attack_success_rate/{key}"] = counts[f"flipped_{eps}"] / max(counts["clean"], 1)
    return result


def _eps_name(eps: float) -> str:
    """``4/255`` for fractional budgets that are multiples of 1/255, else the decimal (``0.5``, ``1``, ``1.5``):
    the keys readers recognise (an L2 ε of 1 is ``l2_1``, not ``l2_255/255``)."""
    k = eps * 255
    fraction = not math.isclose(eps, round(eps), abs_tol=1e-9)
    return f"{round(k)}/255" if fraction and math.isclose(k, round(k), abs_tol=1e-6) else f"{eps:g}"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m clipag.eval", description=__doc__.split("\n\n")[0],
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", required=True, help="registry name, hf-hub: id, Hub-layout folder (e.g. a "
                                                  "clipag.finetune export) or checkpoint file")
    p.add_argument("--data", required=True, help="image folder root/<class>/<images>, a CSV/TSV with image paths "
                                                 "and labels, webdataset shards with a class field, or 'synthetic'")
    p.add_argument("--dataset-type", default="auto", choices=datasets.DATASET_TYPES, help="how to read --data (auto: "
                                                                                 "guessed as clipag.finetune does)")
    p.add_argument("--classnames", default=None, help="one class name per line: in sorted directory order for a "
                                                      "folder (default: root/classnames.txt, else directory names), "
                                                      "in index order for numeric CSV labels or webdataset classes")
    p.add_argument("--csv-separator", default=None, help="CSV/TSV column separator (default: tab for .tsv, comma "
                                                         "otherwise)")
    p.add_argument("--csv-img-key", default="filepath", help="CSV column with image paths (relative to the file)")
    p.add_argument("--csv-label-key", default="label", help="CSV column with class names (or indices into "
                                                            "--classnames)")
    p.add_argument("--image-key", default="jpg;jpeg;png;webp", help="webdataset image extensions, first present wins")
    p.add_argument("--label-key", default="cls", help="webdataset class field (an index into --classnames, or a "
                                                      "class name)")
    p.add_argument("--templates", default="simple",
                   help="prompt templates: simple (open_clip's 7), openai (OpenAI's 80), a file, or one '{}' string")
    p.add_argument("--norm", choices=NORMS, default="linf", help="threat model (FARE/TeCoA evaluate L∞)")
    p.add_argument("--epsilon", nargs="*", type=parse_epsilon, default=[2 / 255, 4 / 255],
                   help="budgets in [0,1] pixel units, e.g. 4/255; none = clean only (FARE/TeCoA papers)")
    p.add_argument("--attack-steps", type=int, default=10, help="PGD steps (FARE's training attack; their "
                                                                "reported numbers use 100-step APGD)")
    p.add_argument("--attack-step-size", type=parse_epsilon, default=None,
                   help="step for the largest ε, scaled with ε (default 2.5·ε/steps, Madry et al.)")
    p.add_argument("--samples", type=int, default=None, help="evaluate a seeded random subset of this size")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=2, help="data loader workers")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads; default: one per "
                                                             "core; 1 is ~3x faster for 32 px toy models)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast dtype for the image tower (fp32 weights either way)")
    p.add_argument("--seed", type=int, default=0, help="subset and random-start seed")
    p.add_argument("--synthetic-classes", type=int, default=10, help="classes of --data synthetic")
    p.add_argument("--output", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--tensorboard", default=None, help="also write the numbers to this TensorBoard directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_pixel_model(name: str, device: torch.device | str) -> PixelCLIP:
    """Any name ``clipag.load`` takes, as an fp32 :class:`PixelCLIP` using the model's own mean/std."""
    from .loader import load

    model, _ = load(name, device, precision="fp32")
    return PixelCLIP(model).to(device).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except MissingExtra as e:
        raise SystemExit(f"python -m clipag.eval: error: {e}") from None


def _main(argv: list[str] | None) -> int:
    from .images import check_output, check_output_folder
    from .metrics import MetricsWriter

    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # before the model loads and the attacks run
        check_output(args.output, "--output", (".jsonl", ".json"), append=True)
        check_output_folder(args.tensorboard, "--tensorboard")
    except ValueError as e:
        parser.error(str(e))
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if datasets.needs_webdataset(args.data, args.dataset_type):
        require("train", "python -m clipag.eval on webdataset shards", ["webdataset"])
    if args.tensorboard:
        require("train", "python -m clipag.eval --tensorboard", ["tensorboard"])
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(levelname)s %(message)s")  # skipped samples are reported, as in training
    model = load_pixel_model(args.model, args.device)
    batches, classnames, total = eval_batches(
        args.data, model.model.visual.input_resolution, args.batch_size, args.samples, args.seed, args.workers,
        args.classnames, args.synthetic_classes, dataset_type=args.dataset_type, csv_separator=args.csv_separator,
        csv_img_key=args.csv_img_key, csv_label_key=args.csv_label_key, image_key=args.image_key,
        label_key=args.label_key)
    weights = zero_shot_weights(model, classnames, load_templates(args.templates), args.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    result = evaluate(model, batches, weights, args.norm, args.epsilon, args.attack_steps, args.attack_step_size,
                      args.device, dtype, args.seed, total, progress=not args.no_progress)
    result = {"model": args.model, "data": args.data, "attack_steps": args.attack_steps, **result}
    if not result["samples"]:
        raise SystemExit(f"{args.data}: no image could be read ({result['skipped']} skipped); nothing was evaluated")
    writer = MetricsWriter(args.output, args.tensorboard)
    writer.write(result)
    writer.close()
    for key, value in result.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
