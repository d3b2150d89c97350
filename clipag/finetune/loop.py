"""The training loop of ``python -m clipag.finetune``: one readable loop, as in nanoGPT.

Each step, for each micro-batch: build the objective's targets without gradients, attack the images with
PGD against them (ε ramped), then take the gradient of the same objective on the adversarial images.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..eval import PixelCLIP, eval_batches, evaluate, load_templates, zero_shot_weights
from ..images import check_output_folder
from ..metrics import MetricsWriter
from ..model import load_weights
from ..tokenizer import tokenize
from . import checkpoint, distributed, rundir
from .args import from_scratch, parse_args
from .build import Precision, create_model, epsilon_at, lr_at, param_groups
from .data import build_source, fit_workers, make_loader
from .export import export_model, push_to_hub
from .losses import Objective
from .step import AdversarialStep
from .watch import SIGNALS, LearningWatch, suggestions

__all__ = ["train", "TrainResult"]

log = logging.getLogger("clipag.finetune")


@dataclass
class TrainResult:
    output_dir: Path
    export_dir: Path | None
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)  # the last logged training metrics
    eval: dict[str, Any] | None = None  # the last evaluation
    history: list[dict[str, Any]] = field(default_factory=list)  # every logged training record of this process
    not_learning: str | None = None  # the collapse warning the run ended with, if any (see watch.py)


def train(argv: list[str] | None = None, **overrides: Any) -> TrainResult:
    """Run ``python -m clipag.finetune`` in-process: ``train(["--epsilon", "1"], steps=100)``."""
    args = parse_args(argv, **overrides)
    d = distributed.setup(args.device, args.dist_backend)
    try:
        return _run(args, d)
    finally:
        distributed.cleanup(d)


def _setup_logging(output_dir: Path, main: bool) -> None:
    """The run's log, and the data readers' (skipped samples), to stderr and OUTPUT_DIR/train.log."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if main:
        handlers.append(logging.FileHandler(output_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._clipag = True  # type: ignore[attr-defined]
    for logger in (log, logging.getLogger("clipag.data")):
        logger.setLevel(logging.INFO if main else logging.WARNING)
        for handler in [h for h in logger.handlers if getattr(h, "_clipag", False)]:
            logger.removeHandler(handler)
            handler.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = False


def _attack_seed(*parts: int) -> int:
    """A per-(seed, rank, step, micro-batch) seed: random starts need no RNG state to resume exactly."""
    return int.from_bytes(hashlib.sha256("-".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def weight_digests(model: torch.nn.Module, d: distributed.Dist) -> list[str]:
    """Every rank's sha256 of its fp32 weights (sorted keys): equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        digest.update(state[key].detach().float().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return distributed.all_gather_object(digest.hexdigest(), d)


def _run(args: Any, d: distributed.Dist) -> TrainResult:
    """Claim and plan the output folder (``rundir``: one run per folder, nothing replaced silently), then train."""
    out = Path(args.output_dir)
    try:  # before any model is built or data read
        check_output_folder(out, "--output-dir")
    except ValueError as e:
        raise SystemExit(f"python -m clipag.finetune: error: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    plan = rundir.prepare(args, out, d)
    try:
        return _train(args, d, out, plan)
    finally:
        plan.release()


def _train(args: Any, d: distributed.Dist, out: Path, plan: rundir.Plan) -> TrainResult:
    if args.threads:
        torch.set_num_threads(args.threads)
    _setup_logging(out, d.main)
    for level, note in plan.notes if d.main else ():
        log.log(level, note)
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model, model_cfg, preprocess = create_model(args)
    torch.manual_seed(args.seed + d.rank)  # per-rank seeding for anything stochastic after init
    pixel = PixelCLIP(model).to(d.device)  # the mean/std create_model attached
    context = int(model.context_length)
    source = build_source(args, model.visual.input_resolution, context)
    args.workers = fit_workers(source, d.world_size, args.workers)  # fewer shards than workers: fewer workers
    global_batch = args.batch_size * args.accum_steps * d.world_size
    steps = args.steps
    if steps is None and args.epochs is not None:
        samples = source.num_samples or args.train_num_samples
        if not samples:
            raise SystemExit("--epochs with webdataset data needs --train-num-samples")
        steps = max(1, math.ceil(args.epochs * samples / global_batch))
    steps = steps or 20000
    warmup = args.warmup if args.warmup is not None else min(1400, int(0.07 * steps))

    class_tokens, templates = None, load_templates(args.templates)
    if args.objective == "tecoa" and source.classnames:
        prompts = [t.format(name) for name in source.classnames for t in templates]
        class_tokens = tokenize(prompts, context_length=context, truncate=True).to(d.device)
    elif args.objective == "tecoa":
        log.info("tecoa on captioned data: cross-entropy over each batch's distinct captions")
    if from_scratch(args) and not args.unlock_text:
        log.warning("random initial weights with a frozen text tower: pass --pretrained, or --unlock-text to "
                    "pretrain from scratch")
    objective = Objective(args.objective, pixel, class_tokens, len(templates), text_locked=not args.unlock_text)
    precision = Precision(args.precision, d.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(args.beta1, args.beta2),
                                  eps=args.adam_eps)

    run = _resume(args, out, d, model, optimizer, precision, plan)
    start_step = run.step

    attack_forward = torch.compile(pixel) if args.compile else pixel
    ddp = torch.nn.parallel.DistributedDataParallel(
        pixel, device_ids=[d.device.index] if d.device.type == "cuda" else None) if d.distributed else None
    net = ddp or pixel
    if args.compile:
        net = torch.compile(net)
    micro_step = AdversarialStep(
        pixel, net, attack_forward, objective, precision, args.norm, args.attack_steps, args.attack_random_start,
        args.unlock_text, global_loss=args.gather_features and d.distributed and args.objective == "contrastive")
    loader = make_loader(source, args.batch_size, d.rank, d.world_size, args.workers, run.consumed, run.positions,
                         pin_memory=d.device.type == "cuda")
    batches = iter(loader)
    purge = start_step + 1 if plan.kind != "new" and start_step else None  # hide what a killed run logged later
    writer = MetricsWriter(out / "metrics.jsonl", out / "tensorboard" if args.tensorboard else None, purge) \
        if d.main else None
    if d.main:
        log.info("%s: %s steps × global batch %d on %d rank(s) (%s, %s), objective %s, %s", out, steps, global_batch,
                 d.world_size, d.device, precision.name, args.objective, describe_attack(args))
    result = TrainResult(out, None, steps)
    watch = LearningWatch(args.collapse_window or max(50, steps // 20), start=max(warmup, run.step),
                          hints=suggestions(args, getattr(model.visual, "pool_type", None)))  # judged from here
    bar = tqdm(total=steps, initial=run.step, unit="step", disable=not (d.main and args.progress))
    # since the last log: loss, accuracy, micro-batches, then the step's signals (image/text similarity, chance
    # loss/accuracy) summed where defined, and how often each was defined
    sums = torch.zeros(3 + 2 * len(SIGNALS), dtype=torch.float64, device=d.device)
    window_start, window_steps = time.perf_counter(), 0
    for step in range(run.step, steps):
        lr = lr_at(step, args.lr, warmup, steps, args.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        eps = epsilon_at(step, args.epsilon, args.epsilon_warmup, steps)
        alpha = args.attack_step_size * eps / args.epsilon if args.attack_step_size and args.epsilon else None
        for micro in range(args.accum_steps):
            batch = next(batches)
            run.positions[int(batch["position"][0])] = tuple(batch["position"][1:].tolist())
            run.consumed, run.skipped = run.consumed + 1, run.skipped + int(batch["skipped"])
            images, tokens, labels = (batch[k].to(d.device, non_blocking=True) for k in ("images", "tokens", "labels"))
            generator = torch.Generator(d.device).manual_seed(_attack_seed(args.seed, d.rank, step, micro))
            sync = ddp.no_sync() if ddp is not None and micro < args.accum_steps - 1 else nullcontext()
            with sync:
                loss, acc, signals = micro_step(images, tokens, labels, eps, alpha, generator)
                precision.scaler.scale(loss / args.accum_steps).backward()
            sums[0] += loss.detach()
            sums[1] += acc.detach()
            sums[2] += 1
            sums[3:3 + len(SIGNALS)] += signals.nan_to_num(0.0)
            sums[3 + len(SIGNALS):] += signals.isfinite()
        precision.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip if args.grad_clip > 0 else math.inf)
        precision.scaler.step(optimizer)
        precision.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if args.unlock_text:
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        done, window_steps = step + 1, window_steps + 1
        bar.update(1)

        if done % args.log_every == 0 or done == steps:
            loss_sum, acc_sum, count, *signal_sums, skipped_all = distributed.all_reduce_sum(
                [*sums.tolist(), run.skipped], d)
            elapsed = time.perf_counter() - window_start
            metrics = {"loss": loss_sum / count, "acc": acc_sum / count, "lr": lr, "epsilon": eps,
                       "grad_norm": float(grad_norm), "logit_scale": float(model.logit_scale.detach().exp()),
                       "images_per_s": global_batch * window_steps / elapsed, "skipped_samples": int(skipped_all),
                       "samples_seen": done * global_batch}
            metrics.update({name: total / n for name, total, n in
                            zip(SIGNALS, signal_sums[:len(SIGNALS)], signal_sums[len(SIGNALS):], strict=True) if n})
            warning = watch.update(done, metrics)
            metrics["not_learning"] = int(watch.collapsed)
            if warning and d.main:
                log.warning(warning)
            result.metrics = metrics
            result.history.append({"step": done, **metrics})
            if writer:
                writer.write(metrics, done)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", eps=f"{eps:.3g}",
                                img_s=f"{metrics['images_per_s']:.0f}", refresh=False)
            sums.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if args.eval_data and ((args.eval_every and done % args.eval_every == 0) or done == steps):
            result.eval = _evaluate(args, pixel, precision, d, done, writer)
            window_start = time.perf_counter()
        if done % args.save_every == 0 or done == steps:
            run.step = done
            schedule = {"schedule": args.lr_schedule, "base_lr": args.lr, "warmup": warmup, "steps": steps}
            _save(args, out, d, run, model, optimizer, precision, schedule,
                  {"model_cfg": model_cfg, "preprocess_cfg": preprocess}, plan)
            window_start = time.perf_counter()
    bar.close()
    trained, final_step = start_step < steps, max(start_step, steps)
    if not trained and d.main:
        log.info("%s is already at step %d (--steps %d): nothing to train", out, start_step, steps)
    summary = watch.summary()
    result.not_learning = summary if watch.collapsed else None  # every rank saw the same averages
    if d.main:
        _log_summary(result, summary)

    digests = weight_digests(model, d)
    identical = len(set(digests)) == 1
    if not identical:
        raise RuntimeError("ranks ended with different weights: DDP went out of sync")
    if d.main and args.export and not trained and plan.export_current:
        result.export_dir = out / "export"
        log.info("%s already holds step %d's weights", result.export_dir, final_step)
    elif d.main and args.export:
        moved = rundir.set_aside_export(out)  # an export is never overwritten
        if moved:
            log.warning(moved)
        result.export_dir = export_model(model, model_cfg, preprocess, out / "export", run={
            "step": final_step, "branch": plan.branch}, info={
            "pretrained": args.pretrained, "objective": args.objective, "norm": args.norm, "epsilon": args.epsilon,
            "attack_steps": args.attack_steps, "epsilon_warmup": args.epsilon_warmup, "steps": steps,
            "global_batch": global_batch, "data": f"{args.dataset_type}: {args.train_data or 'synthetic'}",
            "text": "trained" if args.unlock_text else "frozen", "load_name": args.push_to_hub and
            f"hf-hub:{args.push_to_hub}" or str(out / "export"), "title": args.push_to_hub or out.name})
        log.info("exported %s", result.export_dir)
        if args.push_to_hub:
            log.info("pushed to %s", push_to_hub(result.export_dir, args.push_to_hub, args.hub_private))
    if d.main and not args.export and (out / "export").exists() and trained:
        log.warning("%s holds an earlier step's export; --no-export left it as it is", out / "export")
    if writer and (trained or not plan.done_logged):
        writer.write({"event": "done", "replicas_identical": identical, "world_size": d.world_size,
                      "weight_digests": digests, "not_learning": result.not_learning}, final_step)
    if writer:
        writer.close()
    distributed.barrier(d)
    return result


def describe_attack(args: Any) -> str:
    """The training attack in words; ε = 0 (or 0 PGD steps) is clean training, and the log says so."""
    if args.epsilon <= 0 or args.attack_steps <= 0:
        why = "ε = 0" if args.epsilon <= 0 else "--attack-steps 0"
        return f"clean training: no attack ({why})"
    ramp = f", ε ramped from 0 over the first {args.epsilon_warmup:.0%} of steps" if args.epsilon_warmup else ""
    return f"adversarial training: {args.attack_steps}-step {args.norm} PGD at ε={args.epsilon:g}{ramp}"


def _log_summary(result: TrainResult, watch_summary: str | None) -> None:
    """The end of the run in one line, and the collapse warning again if the run ended collapsed."""
    m = result.metrics
    if m:
        names = {"loss": "loss", "chance_loss": "chance loss", "acc": "batch accuracy",
                 "image_similarity": "image similarity", "text_similarity": "text similarity"}
        log.info("finished %d steps: %s", result.steps, ", ".join(f"{label} {m[key]:.4f}" for key, label in
                                                                   names.items() if key in m))
    if result.not_learning:
        log.warning(result.not_learning)
    elif watch_summary:  # stuck for a while, then learned
        log.info(watch_summary)


@dataclass
class RunState:
    """Where a run is: what a checkpoint must restore besides weights and optimiser."""

    step: int = 0
    consumed: int = 0  # batches this rank has taken from its loader
    positions: dict[int, tuple[int, ...]] = field(default_factory=dict)  # per loader slot, see data.py
    skipped: int = 0  # corrupt samples this rank met


def _resume(args: Any, out: Path, d: distributed.Dist, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            precision: Precision, plan: rundir.Plan) -> RunState:
    """Restore weights, optimiser, scaler, step, data positions and RNG from the checkpoint ``plan`` chose;
    ``--resume latest`` with nothing to resume starts fresh (so a preemptible job can always pass it)."""
    run = RunState()
    if plan.resume is None:
        if args.resume == "latest":
            log.info("--resume latest: no checkpoint of the run in %s, starting fresh", out)
        return run
    path = Path(plan.resume)
    state = checkpoint.load(path)
    load_weights(model, state["model"], str(path))
    optimizer.load_state_dict(state["optimizer"])
    precision.scaler.load_state_dict(state["scaler"])
    run.step, data = state["step"], state["data"]
    workers = max(1, args.workers)
    if data["world_size"] == d.world_size and data["workers"] == workers:
        run.consumed, run.skipped = data["consumed"], data["skipped"][d.rank]
        run.positions = {int(k): tuple(v) for k, v in data["positions"][d.rank].items()}
        checkpoint.set_rng_state(state["rng"][d.rank], d.device)
    else:
        log.warning("resuming with %d ranks × %d workers (checkpoint: %d × %d): the data order restarts",
                    d.world_size, workers, data["world_size"], data["workers"])
    what = {"continue": "", "rewind": f", as a new branch ({plan.branch})", "new": f", as a new run ({plan.branch})"}
    log.info("resumed from %s at step %d%s", path, run.step, what[plan.kind])
    return run


def _save(args: Any, out: Path, d: distributed.Dist, run: RunState, model: torch.nn.Module,
          optimizer: torch.optim.Optimizer, precision: Precision, schedule: dict[str, Any],
          configs: dict[str, Any], plan: rundir.Plan) -> None:
    """Gather every rank's data positions and RNG states; rank 0 writes the checkpoint atomically."""
    mine = {"positions": {k: list(v) for k, v in run.positions.items()}, "rng": checkpoint.rng_state(d.device),
            "skipped": run.skipped}
    gathered = distributed.all_gather_object(mine, d)
    if not d.main:
        return
    checkpoint.save({
        "step": run.step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": precision.scaler.state_dict(), "scheduler": schedule, "rng": [g["rng"] for g in gathered],
        "data": {"consumed": run.consumed, "world_size": d.world_size, "workers": max(1, args.workers),
                 "positions": [g["positions"] for g in gathered], "skipped": [g["skipped"] for g in gathered]},
        "args": dict(vars(args)), "run": {"id": plan.branch, "lineage": plan.lineage}, **configs,
    }, out, run.step, args.keep_checkpoints, plan.lineage)


def _evaluate(args: Any, pixel: PixelCLIP, precision: Precision, d: distributed.Dist, step: int,
              writer: MetricsWriter | None) -> dict[str, Any] | None:
    """Zero-shot clean/robust accuracy on rank 0; the others wait (evaluation is small next to training)."""
    result = None
    if d.main:
        size = pixel.model.visual.input_resolution
        batches, classnames, total = eval_batches(args.eval_data, size, args.batch_size, args.eval_samples, args.seed,
                                                  min(args.workers, 2), None, args.synthetic_classes,
                                                  csv_separator=args.csv_separator, csv_img_key=args.csv_img_key,
                                                  image_key=args.image_key)
        weights = zero_shot_weights(pixel, classnames, load_templates(args.eval_templates or args.templates), d.device)
        eps = args.epsilon if args.eval_epsilon is None else args.eval_epsilon
        result = evaluate(pixel, batches, weights, args.eval_norm or args.norm, [eps] if eps > 0 else [],
                          args.eval_attack_steps, None, d.device, precision.dtype, args.seed, total, progress=False)
        result = {f"eval/{k}": v for k, v in result.items()}
        log.info("step %d eval: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
        if writer:
            writer.write(result, step)
    distributed.barrier(d)
    return result
