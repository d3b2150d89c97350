"""The prompt-file runner: every item of a prompt file made once, resumable, on one process or every rank.

Under ``torchrun`` (or SLURM ``srun``) each rank runs the same command on its own device (the process group of
:mod:`clipag.finetune.distributed`). Rank 0 checks the output folder and lists the items not yet finished; one
``all_gather`` hands that list to every rank, and rank r makes items r, r+W, r+2W... of it, so each item is
made by exactly one rank. Nothing else waits on the other ranks: a rank that is done marks it, and the last one
merges the manifest (:mod:`.manifest`), so uneven ranks never hit a collective's timeout.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .items import Item
from .jobs import Job, weights_file
from .manifest import (
    append_record,
    check_run,
    file_sha256,
    is_finished,
    lock,
    mark_done,
    merge_parts,
    part_path,
    read_records,
)

__all__ = ["run_items", "batches"]


def batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    """Up to ``size`` items with the same settings (they share encoder calls), in the order given."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.settings_key(), []).append(item)
    for group in groups.values():
        for start in range(0, len(group), size):
            yield group[start:start + size]


def _plan(job: Job, items: list[Item], out: Path, model: str) -> dict[str, Any]:
    """Rank 0's look at the output folder: the run's identity checked or recorded, leftovers of a killed launch
    merged, and the keys of the items still to make (in file order)."""
    from .. import __version__

    path = weights_file(model, getattr(job.args, "download_root", None))
    weights_sha = file_sha256(path) if path is not None and path.is_file() else None
    if weights_sha is None:
        print(f"clipag {job.command}: warning: could not find the safetensors file {model} was loaded from; "
              "weights_sha256 is null in the manifest", file=sys.stderr)
    identity = {"command": job.command, "weights_sha256": weights_sha, "config": job.shared_config(),
                **job.identity()}
    check_run(out, {"command": job.command, "model": model, "identity": identity, "clipag": __version__,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    with lock(out):
        merge_parts(out)
        for marker in out.glob(".done-*"):
            marker.unlink(missing_ok=True)
    records = read_records(out)
    finished = {key for key, record in records.items() if is_finished(out, record)}
    keys = [item.key(job.command) for item in items]
    return {"pending": [key for key in keys if key not in finished], "done": len(set(keys) & finished),
            "weights_sha256": weights_sha, "launch": uuid.uuid4().hex, "error": None}


def _record(job: Job, item: Item, result: Any, files: list[Path], out: Path, worker: Any, model: str,
            plan: dict[str, Any], rank: int, world_size: int, device: str, batch: int) -> dict[str, Any]:
    from .. import __version__

    best, final = job.losses(result, job.config_of(worker))
    hashes = [file_sha256(path) for path in files]
    record = {"key": item.key(job.command), "item": item.index, "command": job.command, "prompt": item.prompt,
              "seed": item.seed,
              "model": model, "weights_sha256": plan["weights_sha256"],
              "config": dataclasses.asdict(job.config_of(worker)),
              "best_loss": best, "final_loss": final, "steps": result.steps_done,
              "seconds": round(result.seconds, 3), "file": files[0].relative_to(out).as_posix(), "sha256": hashes[0],
              "also": [{"file": p.relative_to(out).as_posix(), "sha256": h} for p, h in zip(files[1:], hashes[1:],
                                                                                              strict=True)],
              "rank": rank, "world_size": world_size, "device": device, "batch": batch,
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "clipag": __version__}
    if item.content is not None:
        record["content"], record["content_sha256"] = item.content, item.content_sha256
    return record


def _busy(out: Path) -> str | None:
    """The lock of a rank of another launch still working in ``out``, if any (each rank holds its own while it
    works, so a second launch cannot take items the first is making, even after the first's rank 0 is done)."""
    from filelock import Timeout

    for path in sorted(out.glob(".run.rank*.lock")):
        probe = lock(out, path.name, timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return path.name
        probe.release()
    return None


def run_items(job: Job, items: list[Item], out: Path, *, model: str, dist: Any, batch: int = 1,
              quiet: bool = False) -> int:
    """Make every unfinished item of ``items`` into ``out``; returns the exit status (130 after Ctrl-C)."""
    from filelock import Timeout
    from tqdm.auto import tqdm

    from ..finetune.distributed import all_gather_object

    out.mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] | None = None
    if dist.main:
        busy = _busy(out)
        try:
            plan = {"error": f"another clipag run is writing to {out} ({busy} is held); wait for it or give "
                             "another --out"} if busy else _plan(job, items, out, model)
        except ValueError as e:
            plan = {"error": str(e)}
    plan = all_gather_object(plan, dist)[0]
    if plan["error"]:
        raise ValueError(plan["error"])
    mine_lock = lock(out, f".run.rank{dist.rank}.lock", timeout=0)
    try:
        mine_lock.acquire()
    except Timeout:
        raise ValueError(f"another clipag run is writing to {out}; wait for it or give another --out") from None
    try:
        by_key = {item.key(job.command): item for item in items}
        pending = [by_key[key] for key in plan["pending"]]
        mine = pending[dist.rank::dist.world_size]
        if dist.main and not quiet:
            print(f"{len(by_key)} item(s): {plan['done']} already in {out}, {len(pending)} to make"
                  + (f" on {dist.world_size} processes" if dist.distributed else "")
                  + (f", {batch} per batch" if batch > 1 else ""), file=sys.stderr)
        return _make(job, mine, out, model, plan, dist, batch, quiet, tqdm)
    finally:
        mine_lock.release()


def _make(job: Job, mine: list[Item], out: Path, model: str, plan: dict[str, Any], dist: Any, batch: int,
          quiet: bool, tqdm: Any) -> int:
    part = part_path(out, dist.rank)
    label = job.command + (f" rank {dist.rank}/{dist.world_size}" if dist.distributed else "")
    bar = tqdm(total=len(mine), desc=label, unit="image", disable=quiet or not dist.main, dynamic_ncols=True)
    made = 0
    try:
        for group in batches(mine, batch):
            worker = job.worker_for(group[0])
            sessions = [job.session(worker, item) for item in group]
            steps = job.steps(worker)
            for t in range(steps):
                loss = worker.step_many(sessions)[0].loss
                bar.set_postfix({"step": f"{t + 1}/{steps}", "loss": f"{loss:.4f}"}, refresh=False)
                bar.update(0)  # redraws at tqdm's pace: the ETA counts items, the postfix shows the step
            for item, session in zip(group, sessions, strict=True):
                result = session.result()
                files = job.save(result, out / item.stem(job.command))
                append_record(part, _record(job, item, result, files, out, worker, model, plan, dist.rank,
                                            dist.world_size, str(worker.device), len(group)))
                print(files[0])
                made += 1
            bar.update(len(group))
    except KeyboardInterrupt:
        bar.close()
        if not dist.distributed:
            with lock(out):
                merge_parts(out)
        print(f"interrupted: {made} item(s) finished by this process are kept in {out}; run the same command "
              "again to make the rest", file=sys.stderr)
        return 130
    bar.close()
    merged = mark_done(out, plan["launch"], dist.rank, dist.world_size)
    if merged and not quiet:
        print(f"{len(read_records(out))} item(s) in {out / 'manifest.jsonl'}", file=sys.stderr)
    return 0
