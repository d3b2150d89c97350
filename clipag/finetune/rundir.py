"""The output folder of a finetune run: one run per folder, and nothing in it replaced without a word.

``run.json`` names the folder's run: the id of its current branch, its lineage (see ``checkpoint``) and where it
started; ``checkpoints/``, ``metrics.jsonl``, ``export/``, ``tensorboard/`` and ``train.log`` are its history.
Before training, rank 0 takes the folder's lock (a second process on it stops at once; the lock dies with its
process), deletes temp files that killed writers left, and works out what the run starts from and what that
would replace:

- *continue* (``--resume latest``, or the run's newest checkpoint): nothing but what an interrupted process left
  after its last good checkpoint (metrics lines, so ``metrics.jsonl`` holds one timeline; torn checkpoint files);
- *rewind* (an older checkpoint of the run): a new branch from that step; the run's later checkpoints, later
  metrics and its export would be replaced;
- *new* (no ``--resume``, or another run's checkpoint): everything the folder holds would be replaced.

Replacing more than that is refused, saying what was found and what to run instead, unless
``--overwrite`` is given: then the files move to ``OUTPUT_DIR/replaced/TIME/``. Nothing is ever deleted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint, distributed
from .checkpoint import LEGACY, Lineage, on_lineage, run_info, truncate
from .export import exported_run

__all__ = ["Plan", "prepare", "current_lineage", "set_aside_export", "RUN_FILE", "LOCK_FILE", "REPLACED"]

log = logging.getLogger("clipag.finetune")
RUN_FILE, LOCK_FILE, REPLACED = "run.json", ".lock", "replaced"


@dataclass
class Plan:
    """What rank 0 decided, sent to every rank."""

    kind: str  # "new", "continue" or "rewind"
    resume: str | None  # the checkpoint to load; None: step 0
    step: int
    branch: str
    lineage: Lineage
    export_current: bool = False  # export/ already holds this step's weights (a finished run resumed)
    done_logged: bool = False  # metrics.jsonl already ends this step with the "done" record
    notes: list[tuple[int, str]] = field(default_factory=list)  # (level, message), logged once the log is open
    lock: Any = None  # rank 0's hold on the folder (not sent)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def current_lineage(output_dir: str | os.PathLike) -> Lineage:
    run = _read_run(Path(output_dir))
    return run["lineage"] if run else LEGACY


def _read_run(out: Path) -> dict[str, Any] | None:
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path} is unreadable ({e}); it names the run in {out}: restore it, or move {out} "
                         "away") from None


def prepare(args: Any, out: Path, d: distributed.Dist) -> Plan:
    """Rank 0 locks the folder, plans and moves what the run replaces; every rank gets the plan, or the reason
    the run cannot start (raised as ``SystemExit`` on every rank, so none waits for the others)."""
    plan, error, failure = None, None, None
    if d.main:
        try:
            plan = _plan(args, out)
        except SystemExit as e:
            error = str(e)
        except Exception as e:  # e.g. a move that failed: raised here, and the other ranks told why
            failure, error = e, f"rank 0 could not prepare {out}: {type(e).__name__}: {e}"
    fields = plan and {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.name != "lock"}
    sent = distributed.all_gather_object({"error": error, "plan": fields} if d.main else None, d)[0]
    if failure is not None:
        raise failure
    if sent["error"]:
        raise SystemExit(sent["error"])
    return plan if d.main else Plan(**sent["plan"])


def _lock(out: Path) -> Any:
    """Hold ``OUTPUT_DIR/.lock`` (an OS file lock: released when its process dies, so never stale)."""
    from filelock import FileLock, Timeout

    path = out / LOCK_FILE
    if path.is_symlink():
        raise SystemExit(f"{path} is a symbolic link; remove it (clipag.finetune never writes through links)")
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise SystemExit(f"{out} is in use: another clipag.finetune process holds {path}. Wait for it to end, or "
                         "choose another --output-dir") from None
    except NotImplementedError:  # a file system without locks (some NFS/Lustre mounts)
        log.warning("%s cannot be locked on this file system: make sure no other run writes to it", out)
        return None
    return lock


def _plan(args: Any, out: Path) -> Plan:
    lock = _lock(out)
    try:
        plan = _decide(args, out)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    plan.lock = lock
    return plan


def _temp_names(out: Path) -> list[tuple[Path, str]]:
    """Where a run writes through temp files (``.NAME.PID.tmp``), and the ``NAME`` patterns it uses there."""
    from ..weights import CONFIG_NAME, WEIGHTS_NAME

    return [(out, "metrics\\.jsonl|run\\.json"), (checkpoint.checkpoint_dir(out), checkpoint.STEP_NAME),
            (out / "export", "|".join(re.escape(name) for name in (WEIGHTS_NAME, CONFIG_NAME)))]


def _decide(args: Any, out: Path) -> Plan:
    notes: list[tuple[int, str]] = []
    for folder, names in _temp_names(out):
        removed, kept = checkpoint.remove_stale_temps(folder, names)
        notes += [(logging.INFO, f"removed {p.name} from {folder}: a temp file of a killed process") for p in removed]
        notes += [(logging.INFO, f"left {p} alone: its process is alive (another host's, or still writing?)")
                  for p in kept]
    run = _read_run(out)
    lineage = run["lineage"] if run else LEGACY
    readable, unreadable = _checkpoints(out)
    notes += [(logging.WARNING, f"checkpoint {p} is unreadable ({why}): it is never resumed")
              for _, p, why in unreadable]
    ours = [(s, p) for s, p, b in readable if on_lineage(b, s, lineage)]
    records = _metrics(out)
    held = bool(run) or bool(readable) or bool(records) or (out / "export").exists()

    if args.resume == "latest":
        origin, step, origin_lineage = _latest(out, run, ours)
        on_ours = True
    elif args.resume:
        origin = Path(args.resume)
        if not origin.is_file():
            found = ", ".join(str(p) for _, p in ours) or "none"
            raise SystemExit(f"--resume {origin}: no such file (checkpoints of the run in {out}: {found}; "
                             "--resume latest picks the newest)")
        try:
            step, branch, origin_lineage = run_info(origin)
        except Exception as e:
            raise SystemExit(f"--resume {origin}: not a readable clipag.finetune checkpoint ({e})") from None
        on_ours = held and on_lineage(branch, step, lineage)
    else:
        origin, step, origin_lineage, on_ours = None, 0, [], False

    later = [(s, p) for s, p in ours if s > step]
    if not (held and on_ours):
        kind = "new"
    elif later or (run and step < lineage[-1][1]):
        kind = "rewind"
    else:
        kind = "continue"
    if kind == "continue" and run:
        branch, new_lineage = lineage[-1][0], lineage
    else:  # a new branch: its own id, sharing the history up to ``step``
        branch = uuid.uuid4().hex[:12]
        new_lineage = truncate(origin_lineage if kind == "new" else lineage, step) + [[branch, step, None]]

    keep = origin.resolve() if origin else None

    def superseded(record: tuple[int | None, str, bool]) -> bool:
        return kind == "new" or record[0] is None or record[0] > step

    replaced = Replaced(
        checkpoints=[(s, p) for s, p, b in readable if (s > step or not on_lineage(b, s, new_lineage))
                     and p.resolve() != keep],
        metrics=[r for r in records if superseded(r)],
        export=(out / "export").exists() and kind != "continue",
        tensorboard=(out / "tensorboard").exists() and kind == "new",
        unreadable=[(s, p) for s, p, _ in unreadable if kind == "new" or s > step])
    replaced.log = (out / "train.log").exists() and kind == "new" and replaced.any()  # else it goes on
    if replaced.blocking(kind) and not args.overwrite:
        raise SystemExit(_refusal(args, out, kind, step, run, replaced))
    kept = [r for r in records if not superseded(r)]
    if replaced.any():
        level = logging.WARNING if replaced.blocking(kind) else logging.INFO
        notes.append((level, _set_aside(out, replaced, kept, kind, step)))

    if run is None or new_lineage != lineage:
        start = run["start"] if kind == "continue" and run else \
            {"checkpoint": str(origin.resolve()) if origin else None, "step": step}
        _write_json(out / RUN_FILE, {"branch": branch, "lineage": new_lineage, "start": start,
                                     "created": time.strftime("%Y-%m-%d %H:%M:%S %z")})
    exported = exported_run(out / "export")
    return Plan(kind, str(origin) if origin else None, step, branch, new_lineage,
                export_current=exported is not None and exported[0] == step and
                (exported[1] == branch or on_lineage(exported[1], step, new_lineage)),
                done_logged=any(r[0] == step and r[2] for r in kept), notes=notes)


@dataclass
class Replaced:
    """What a run would replace in its output folder."""

    checkpoints: list[tuple[int, Path]]
    metrics: list[tuple[int | None, str, bool]]  # (step or None if unreadable, line, is the "done" record)
    export: bool
    tensorboard: bool
    unreadable: list[tuple[int, Path]]  # checkpoint files that do not load (torn by a copy, a full disk)
    log: bool = False

    def any(self) -> bool:
        return bool(self.checkpoints or self.metrics or self.export or self.tensorboard or self.unreadable)

    def blocking(self, kind: str) -> bool:
        """Anything but what an interrupted process left after its last good checkpoint (metrics, torn files)."""
        return bool(self.checkpoints or self.export or self.tensorboard or
                    (kind == "new" and (self.metrics or self.unreadable)))

    def describe(self) -> str:
        parts = []
        if self.checkpoints:
            n = len(self.checkpoints)
            parts.append(f"{n} checkpoint{'s' * (n > 1)} ({', '.join(p.name for _, p in sorted(self.checkpoints))})")
        if self.metrics:
            n, steps = len(self.metrics), sorted({r[0] for r in self.metrics if r[0] is not None})
            span = "" if not steps else f" (step {steps[0]})" if len(steps) == 1 else f" (steps {steps[0]}-{steps[-1]})"
            parts.append(f"{n} metrics.jsonl record{'s' * (n > 1)}{span}")
        if self.unreadable:
            n = len(self.unreadable)
            parts.append(f"{n} unreadable checkpoint{'s' * (n > 1)} ({', '.join(p.name for _, p in self.unreadable)})")
        parts += ["an export (export/)"] * self.export + ["TensorBoard logs (tensorboard/)"] * self.tensorboard
        return "; ".join(parts)


def _latest(out: Path, run: dict[str, Any] | None, ours: list[tuple[int, Path]]) -> \
        tuple[Path | None, int, Lineage]:
    """The newest checkpoint of the folder's run; before its first, the checkpoint it started from (elsewhere)."""
    lineage = run["lineage"] if run else LEGACY
    if ours:
        return ours[0][1], ours[0][0], lineage
    start = (run or {}).get("start") or {}
    if start.get("checkpoint"):
        path = Path(start["checkpoint"])
        try:
            run_info(path)
        except Exception as e:
            raise SystemExit(f"--resume latest: the run in {out} started from {path} (step {start['step']}), which "
                             f"cannot be read ({type(e).__name__}: {e}), and has no checkpoint of its own yet: restore "
                             "the file, or start anew elsewhere") from None
        return path, start["step"], lineage
    return None, 0, lineage


def _checkpoints(out: Path) -> tuple[list[tuple[int, Path, str | None]], list[tuple[int, Path, str]]]:
    """``([(step, path, branch)], [(step in its name, path, why) of files that do not load])`` of the checkpoint
    folder."""
    readable, unreadable = [], []
    for named_step, path in checkpoint.listing(out):
        try:
            step, branch, _ = run_info(path)
            readable.append((step, path, branch))
        except Exception as e:
            unreadable.append((named_step, path, f"{type(e).__name__}: {e}"))
    return readable, unreadable


def _metrics(out: Path) -> list[tuple[int | None, str, bool]]:
    """``(step, line, is the "done" record)`` per line of ``metrics.jsonl``; step ``None``: a torn line."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record.get("step", 0))
        except (ValueError, TypeError, AttributeError):
            records.append((None, line, False))
            continue
        records.append((step, line, record.get("event") == "done"))
    return records


def _refusal(args: Any, out: Path, kind: str, step: int, run: dict[str, Any] | None, replaced: Replaced) -> str:
    what, where = replaced.describe(), f"{out / REPLACED}/"
    if kind == "new":
        named = f" (branch {run['branch']}, started {run['created']})" if run else ""
        why = f"--resume {args.resume} is not part of its history, so a run from it here" if args.resume else \
            "This new run (no --resume)"
        return (f"{out} already holds a run{named}: {what}. {why} would replace it, so nothing was "
                f"started. To continue that run: the same command with --resume latest. To keep it and start anew: "
                f"another --output-dir. To start anew here: add --overwrite (what is there moves to {where}; nothing "
                "is deleted).")
    if kind == "rewind":
        return (f"--resume {args.resume} goes back to step {step}, but the run in {out} went on past it: {what}. "
                f"A branch from step {step} would replace them, so nothing was started. To branch here: add "
                f"--overwrite (they move to {where}; nothing is deleted; --resume latest then continues the new "
                "branch). To keep both: resume into another --output-dir.")
    return (f"{checkpoint.checkpoint_dir(out)} holds {what}, not part of the run's history (another run's, or an "
            "abandoned branch's): --resume latest does not pick them, and this run could overwrite them by name, so "
            f"nothing was started. Move them elsewhere, or add --overwrite to move them to {where}.")


def _set_aside(out: Path, replaced: Replaced, kept: list[tuple[int | None, str, bool]], kind: str,
               step: int) -> str:
    """Move what the run replaces to a fresh ``replaced/TIME/`` folder; returns what was done, in words."""
    dest = _replaced_dir(out)
    for _, path in replaced.checkpoints + replaced.unreadable:
        _move(path, dest / "checkpoints" / path.name)
    if replaced.metrics:
        aside = dest / "metrics.jsonl"
        with open(aside, "a", encoding="utf-8") as f:
            f.writelines(line if line.endswith("\n") else line + "\n" for _, line, _ in replaced.metrics)
            f.flush()
            os.fsync(f.fileno())
        _write_atomic(out / "metrics.jsonl", "".join(line for _, line, _ in kept))  # after the copy: never lost
    for name, moved in (("export", replaced.export), ("tensorboard", replaced.tensorboard),
                        ("train.log", replaced.log)):
        if moved:
            _move(out / name, dest / name)
    why = {"new": "a new run", "rewind": f"a new branch from step {step}",
           "continue": f"continuing from step {step}"}[kind]
    return f"moved to {dest} ({why}): {replaced.describe()}"


def set_aside_export(out: Path) -> str | None:
    """Before writing an export: move a previous one to ``replaced/TIME/export`` (an export is never overwritten);
    an ``export/`` holding only a killed writer's temp files is just cleared."""
    folder, names = _temp_names(out)[2]
    checkpoint.remove_stale_temps(folder, names)
    if not folder.exists() and not folder.is_symlink():
        return None
    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()
        return None
    dest = _replaced_dir(out) / "export"
    _move(folder, dest)
    return f"moved the previous export to {dest}"


def _replaced_dir(out: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        dest = out / REPLACED / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            dest.mkdir(parents=True)
            return dest
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a folder under {out / REPLACED}")


def _move(src: Path, dest: Path) -> None:
    """A rename where possible (a link moves as a link, never its target); a copy then delete across disks."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dest))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, json.dumps(data, indent=2) + "\n")
