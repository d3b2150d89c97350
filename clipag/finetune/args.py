"""Command-line flags of ``python -m clipag.finetune``. Every default names where it comes from."""

from __future__ import annotations

import argparse
from typing import Any

from ..attacks import NORMS
from ..cli_options import ArgumentParser
from ..datasets import DATASET_TYPES, guess_dataset_type, needs_webdataset
from ..eval import parse_epsilon
from ..extras import require

__all__ = ["build_parser", "parse_args", "from_scratch", "OBJECTIVES", "DATASET_TYPES", "PRECISIONS"]

OBJECTIVES = ("contrastive", "fare", "tecoa")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FINETUNE_LR = 1e-5  # FARE's, for pretrained weights
SCRATCH_LR = 1e-3  # measured here for the bundled 32 px configs, pretrained from scratch (docs/finetune.md)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; help texts already state their defaults and sources."""


def from_scratch(args: argparse.Namespace) -> bool:
    """No ``--pretrained`` weights: the model starts from random initialisation (its config alone)."""
    return not args.pretrained or args.pretrained == "none"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m clipag.finetune", formatter_class=_Formatter,
        description="Adversarially finetune the image tower of any open_clip/clipag CLIP (CLIPAG, FARE, TeCoA), "
                    "or pretrain a CLIP from scratch (--epsilon 0 --unlock-text). Runs on one CPU or GPU, or "
                    "under torchrun / SLURM on many, with no change.",
        epilog="Example (8 GPUs):\n  torchrun --nproc_per_node 8 -m clipag.finetune --train-data "
               "'cc3m/{00000..00331}.tar' \\\n    --train-num-samples 2800000 --dataset-resampled --model ViT-B-32 "
               "--pretrained hf-hub:timm/vit_base_patch32_clip_224.openai --output-dir runs/clipag\n"
               "See docs/finetune.md for the full recipe.")

    def add(group: argparse._ArgumentGroup, *flags: str, default: Any = None, source: str | None = None,
            help: str, shown: str | None = None, **kwargs: Any) -> None:
        if shown is None:
            shown = "off" if default is False else "on" if default is True else "unset" if default is None else default
        note = f" (default: {shown}" + (f"; source: {source})" if source else ")")
        group.add_argument(*flags, default=default, help=help + note, **kwargs)

    g = p.add_argument_group("data")
    add(g, "--train-data", source="required unless --dataset-type synthetic",
        help="webdataset shards ('a/{00000..00099}.tar', several sources joined by '::', pipe:/http URLs allowed), "
             "a CSV/TSV file, or an image folder root/<class>/<images>")
    add(g, "--dataset-type", default="auto", choices=DATASET_TYPES, source="clipag: guessed from --train-data",
        help="how to read --train-data; 'synthetic' needs no data (coloured-layout classes, for smoke tests)")
    add(g, "--train-num-samples", type=int, source="open_clip_train",
        help="samples in one epoch of webdataset data (needed with --epochs; used for epoch counting)")
    add(g, "--dataset-resampled", default=False, action="store_true", source="open_clip_train",
        help="draw shards with replacement (infinite stream; needed when shards < ranks; with fewer shards than "
             "ranks × workers, --workers is lowered instead)")
    add(g, "--train-data-upsampling-factors", source="open_clip_train: equal",
        help="'::'-separated sampling weights of the --train-data sources (with --dataset-resampled)")
    add(g, "--shuffle-window", type=int, default=1000, source="clipag: ~30 MB of JPEGs per worker",
        help="samples shuffled together inside each shard (resumable, unlike a streaming shuffle buffer)")
    add(g, "--image-key", default="jpg;jpeg;png;webp", source="img2dataset",
        help="webdataset image extensions, first present wins")
    add(g, "--caption-key", default="txt", source="img2dataset", help="webdataset caption extension")
    add(g, "--csv-separator", default=None, shown="tab for .tsv, comma otherwise", source="clipag",
        help="CSV/TSV column separator")
    add(g, "--csv-img-key", default="filepath", source="open_clip_train", help="CSV column with image paths")
    add(g, "--csv-caption-key", default="title", source="open_clip_train", help="CSV column with captions")
    add(g, "--classnames", source="clipag: root/classnames.txt, else directory names",
        help="class names of an image folder, one per line in sorted directory order")
    add(g, "--templates", default="a photo of a {}.", source="OpenAI CLIP's basic prompt",
        help="class-prompt templates for folder/synthetic data: simple|openai|FILE|'...{}...'; contrastive "
             "captions use the first, tecoa averages them all")
    add(g, "--synthetic-classes", type=int, default=10, source="clipag", help="classes of the synthetic source")
    add(g, "--synthetic-size", type=int, default=8192, source="clipag", help="samples in one synthetic epoch")
    add(g, "--no-augment", dest="augment", default=True, action="store_false", shown="augment",
        source="open_clip_train: RandomResizedCrop scale 0.9-1", help="turn off the random resized crop of file images")
    add(g, "--workers", type=int, default=4, source="open_clip_train", help="data loader processes per rank")

    g = p.add_argument_group("model")
    add(g, "--model", default="ViT-B-32", source="CLIPAG's released architecture",
        help="open_clip architecture name, a JSON model-config file, or a bundled config "
             "(clipag-tiny-32px, clipag-small-32px); ignored when --pretrained carries its own config")
    add(g, "--pretrained", default="none", source="clipag: explicit",
        help="initial weights: none | a clipag registry name | hf-hub:ORG/REPO | folder | checkpoint file")
    add(g, "--force-quick-gelu", default=False, action="store_true", source="open_clip_train",
        help="use QuickGELU (needed for OpenAI-trained weights)")
    add(g, "--unlock-text", default=False, action="store_true", source="CLIP-JEM: text tower frozen",
        help="also train the text tower and logit scale (pretraining from scratch)")
    add(g, "--grad-checkpointing", default=False, action="store_true", source="open_clip_train",
        help="recompute activations in backward: less memory, ~30%% more compute")
    add(g, "--compile", default=False, action="store_true", source="open_clip_train", help="torch.compile the model")

    g = p.add_argument_group("objective and attack")
    add(g, "--objective", default="contrastive", choices=OBJECTIVES, source="CLIPAG / CLIP-JEM",
        help="contrastive: batch InfoNCE vs frozen text embeddings (identical captions merged); fare: squared L2 "
             "to the frozen original embedding; tecoa: CE over class prompts (or over a batch's distinct captions)")
    add(g, "--norm", default="l2", choices=NORMS, source="CLIPAG (L2)", help="threat model of the training attack")
    add(g, "--epsilon", type=parse_epsilon, default=1.5, source="CLIPAG's pseudo-code, L2 in [0,1] pixels",
        help="attack budget in [0,1] pixel units, e.g. 4/255 for linf; 0 = clean training")
    add(g, "--attack-steps", type=int, default=3, source="measured here: the CPU walkthrough in docs/finetune.md",
        help="PGD steps (1 = FGSM with random start)")
    add(g, "--attack-step-size", type=parse_epsilon, source="2.5·ε/steps, Madry et al. 2018",
        help="PGD step at full ε; scaled with ε during the ramp")
    add(g, "--attack-random-start", default=True, action=argparse.BooleanOptionalAction, source="FARE",
        help="start PGD at a random point of the ε-ball")
    add(g, "--epsilon-warmup", type=float, default=0.5, source="measured here: ε≥1 without a ramp collapsed "
        "clean accuracy (53%%/10%%), with it 95%%/88%%", help="fraction of --steps over which ε ramps linearly "
        "from 0 to --epsilon; 0 turns the ramp off")
    add(g, "--gather-features", default=False, action="store_true", source="clipag: each rank's own batch, "
        "the attack's target", help="contrastive loss over the global batch of all ranks")

    g = p.add_argument_group("optimisation")
    add(g, "--batch-size", type=int, default=128, source="FARE", help="images per rank per step")
    add(g, "--accum-steps", type=int, default=1, source="open_clip_train (--accum-freq)",
        help="micro-batches accumulated per optimiser step")
    add(g, "--steps", type=int, default=None, source="FARE: 20000", help="optimiser steps (or use --epochs)")
    add(g, "--epochs", type=float, default=None, source="open_clip_train",
        help="alternative to --steps, with the dataset size (or --train-num-samples)")
    add(g, "--lr", type=float, default=None, shown=f"{FINETUNE_LR:g} finetuning --pretrained weights, {SCRATCH_LR:g} "
        "from scratch", source="FARE; from scratch: measured here (docs/finetune.md)", help="peak learning rate")
    add(g, "--wd", type=float, default=1e-4, source="FARE", help="AdamW weight decay (not on norms, biases, "
        "logit scale, or any <2-D tensor)")
    add(g, "--beta1", type=float, default=0.9, source="open_clip_train (ViT)", help="AdamW β1")
    add(g, "--beta2", type=float, default=0.98, source="open_clip_train (ViT)", help="AdamW β2")
    add(g, "--adam-eps", type=float, default=1e-6, source="open_clip_train (ViT)", help="AdamW ε")
    add(g, "--warmup", type=int, default=None, source="FARE: 1400 of 20000 steps; capped at 7%% of --steps",
        help="linear LR warmup steps")
    add(g, "--lr-schedule", default="cosine", choices=("cosine", "const"), source="FARE / open_clip_train",
        help="LR after warmup")
    add(g, "--grad-clip", type=float, default=1.0, source="clipag: common practice (open_clip_train: off)",
        help="clip the global gradient norm; 0 = off")
    add(g, "--precision", default="auto", choices=PRECISIONS, source="clipag: bf16 on CUDA, fp32 on CPU",
        help="fp32, or autocast with fp32 master weights: bf16, fp16 (with a gradient scaler)")
    add(g, "--seed", type=int, default=0, source="open_clip_train", help="seed (ranks use seed+rank for attacks)")

    g = p.add_argument_group("run, checkpoints, logging")
    add(g, "--output-dir", default="runs/finetune", source="clipag",
        help="checkpoints, metrics, export: one run per folder. A folder that already holds a run is refused "
             "without --resume (the message says what it holds); one process at a time (OUTPUT_DIR/.lock)")
    add(g, "--resume", default=None, source="clipag: start fresh",
        help="'latest': the newest checkpoint of this folder's run (starts fresh if there is none; never another "
             "run's or branch's); or a checkpoint path: an older one of this run starts a new branch there (needs "
             "--overwrite), one from elsewhere starts a new run from it")
    add(g, "--overwrite", default=False, action="store_true", source="clipag: refuse",
        help="let a new run, or a branch from an older --resume checkpoint, replace what it finds in --output-dir: "
             "those files move to OUTPUT_DIR/replaced/TIME/, never deleted")
    add(g, "--save-every", type=int, default=1000, source="clipag", help="checkpoint every N steps (and at the end)")
    add(g, "--keep-checkpoints", type=int, default=2, source="clipag",
        help="newest checkpoints of the run's own history kept (never the one just written, nor another run's)")
    add(g, "--log-every", type=int, default=10, source="clipag", help="write metrics every N steps")
    add(g, "--tensorboard", default=False, action="store_true", source="clipag",
        help="also log to OUTPUT_DIR/tensorboard")
    add(g, "--collapse-window", type=int, default=None, source="clipag: max(50, 5%% of --steps)",
        help="steps (after warmup) that loss and accuracy must sit at chance, or embeddings collapse, before the "
             "'not learning' warning; it never stops the run")
    add(g, "--no-progress", dest="progress", default=True, action="store_false", shown="bar shown on rank 0",
        source="clipag", help="hide the progress bar")
    add(g, "--eval-data", source="clipag", help="labelled images for zero-shot evaluation, read as python -m "
        "clipag.eval reads --data: an image folder, a CSV/TSV with a 'label' column, or 'synthetic'")
    add(g, "--eval-every", type=int, default=0, source="clipag", help="evaluate every N steps; 0 = at the end only")
    add(g, "--eval-samples", type=int, default=1000, source="clipag", help="seeded subset of --eval-data")
    add(g, "--eval-norm", default=None, choices=NORMS, source="--norm", help="threat model of the evaluation")
    add(g, "--eval-epsilon", type=parse_epsilon, default=None, source="--epsilon", help="evaluation budget")
    add(g, "--eval-attack-steps", type=int, default=10, source="FARE", help="evaluation PGD steps")
    add(g, "--eval-templates", default=None, source="--templates", help="evaluation prompt templates")
    add(g, "--export", default=True, action=argparse.BooleanOptionalAction, source="clipag",
        help="write OUTPUT_DIR/export (open_clip_config.json + open_clip_model.safetensors) at the end")
    add(g, "--push-to-hub", default=None, source="clipag", help="upload the export to this Hugging Face repo")
    add(g, "--hub-private", default=False, action="store_true", source="clipag", help="create the repo private")
    add(g, "--threads", type=int, default=None, source="torch: one per core; measured here: 1 is ~3x faster for "
        "32 px toy models", help="CPU threads per rank (torch.set_num_threads)")
    add(g, "--device", default="auto", shown="cuda if available (cuda:LOCAL_RANK under torchrun), else cpu",
        source="clipag, as every clipag command", help="torch device")
    add(g, "--dist-backend", default="auto", source="torch: nccl on CUDA, gloo on CPU", help="DDP backend")
    return p


def parse_args(argv: list[str] | None = None, **overrides: Any) -> argparse.Namespace:
    """Parse flags; keyword ``overrides`` (``batch_size=8``) win, for the Python entry point."""
    parser = build_parser()
    args = parser.parse_args(argv if argv is not None else [])
    known = vars(args)
    for key, value in overrides.items():
        if key not in known:
            raise TypeError(f"unknown finetune option {key!r}")
        setattr(args, key, value)
    if args.lr is None:  # FARE's 1e-5 suits pretrained weights; from random weights it barely moves in a CPU run
        args.lr = SCRATCH_LR if from_scratch(args) else FINETUNE_LR
    if args.dataset_type == "auto":
        args.dataset_type = guess_dataset_type(args.train_data)
    if args.dataset_type != "synthetic" and not args.train_data:
        parser.error(f"--train-data is required with --dataset-type {args.dataset_type}")
    if args.dataset_type == "webdataset" or needs_webdataset(args.eval_data):
        require("train", "python -m clipag.finetune on webdataset shards", ["webdataset"])
    if args.tensorboard:
        require("train", "python -m clipag.finetune --tensorboard", ["tensorboard"])
    if args.objective == "fare" and args.unlock_text:
        parser.error("--objective fare compares image embeddings only; --unlock-text has nothing to train")
    if args.epsilon < 0 or not 0 <= args.epsilon_warmup <= 1:
        parser.error("--epsilon must be >= 0 and --epsilon-warmup in [0, 1]")
    if args.batch_size < 1 or args.accum_steps < 1:
        parser.error("--batch-size and --accum-steps must be >= 1")
    if args.collapse_window is not None and args.collapse_window < 1:
        parser.error("--collapse-window must be >= 1")
    return args
