"""``DIR/manifest.jsonl``: one JSON object per finished item, and ``DIR/run.json``: the settings all items share.

Writers never share a file. Each process (rank) appends its records to its own ``manifest.rank{R}.jsonl`` (one
``write`` of a whole line, flushed and fsynced before the next item starts), and the parts are folded into
``manifest.jsonl`` (written to a temporary file, then renamed over it) by the last rank of a launch to finish,
under a lock, or at the start of the next launch if a launch was killed. Readers always read the merged file and
any parts, so nothing finished is ever lost or counted twice. One writer per file and an atomic rename need no
``O_APPEND`` atomicity between processes, which network file systems (NFS, often the shared disk of a SLURM
cluster) do not provide; the lock is only taken for the short merge.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "RUN_FILE", "RunMismatch", "read_records", "append_record", "merge_parts", "file_sha256",
           "is_finished", "check_run", "part_path", "lock", "mark_done"]

MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
_PART_GLOB = "manifest.rank*.jsonl"


class RunMismatch(ValueError):
    """``--out DIR`` holds items made with other settings; mixing them would be silent."""


def part_path(folder: Path, rank: int) -> Path:
    return folder / f"manifest.rank{rank}.jsonl"


def lock(folder: Path, name: str = ".manifest.lock", timeout: float = -1) -> Any:
    """A lock file in ``folder`` (``filelock``: an OS lock, released if the process dies)."""
    from filelock import FileLock

    return FileLock(str(folder / name), timeout=timeout)


def file_sha256(path: Path) -> str:
    from clipag.hub import sha256_of

    return sha256_of(path)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    records, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict) and "key" in record:
                records.append(record)
            else:
                bad += 1
    if bad:
        warnings.warn(f"{path}: skipped {bad} unreadable line(s) (a run killed while writing); their items will be "
                      "made again", stacklevel=3)
    return records


def read_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Every record of ``folder``'s manifest and its unmerged parts, by item key (a later record wins)."""
    records: dict[str, dict[str, Any]] = {}
    for path in [folder / MANIFEST, *sorted(folder.glob(_PART_GLOB), key=_rank_of)]:
        if path.is_file():
            for record in _read_lines(path):
                records.pop(record["key"], None)
                records[record["key"]] = record
    return records


def _rank_of(path: Path) -> int:
    digits = path.name.removeprefix("manifest.rank").removesuffix(".jsonl")
    return int(digits) if digits.isdigit() else 1 << 30


def is_finished(folder: Path, record: dict[str, Any]) -> bool:
    """The record's files are all there with the hashes it wrote down."""
    files = [(record.get("file"), record.get("sha256")), *((f.get("file"), f.get("sha256"))
                                                          for f in record.get("also", []))]
    for name, digest in files:
        if not name or not digest:
            return False
        path = folder / name
        if not path.is_file() or file_sha256(path) != digest:
            return False
    return True


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one line, durably: this process is the file's only writer."""
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def merge_parts(folder: Path) -> int:
    """Fold the parts into ``manifest.jsonl`` (atomic rename), in the prompt file's order whatever rank made each
    item, and delete them; returns the number of records. Call it under :func:`lock` when other processes may be
    writing parts."""
    parts = sorted(folder.glob(_PART_GLOB), key=_rank_of)
    records = read_records(folder)
    if not parts and (folder / MANIFEST).is_file():
        return len(records)
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    in_file_order = sorted(records.values(), key=lambda r: r["item"] if isinstance(r.get("item"), int) else 1 << 62)
    with open(tmp, "w", encoding="utf-8") as f:
        for record in in_file_order:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    for part in parts:
        part.unlink(missing_ok=True)
    return len(records)


def mark_done(folder: Path, launch: str, rank: int, world_size: int) -> bool:
    """Record that ``rank`` finished; the last rank of ``launch`` to finish merges the parts. Returns whether
    this call merged."""
    with lock(folder):
        (folder / f".done-{launch}-{rank}").touch()
        markers = [folder / f".done-{launch}-{r}" for r in range(world_size)]
        if not all(m.exists() for m in markers):
            return False
        merge_parts(folder)
        for marker in folder.glob(".done-*"):
            marker.unlink(missing_ok=True)
        return True


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key, "<unset>"), new.get(key, "<unset>"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def check_run(folder: Path, run: dict[str, Any]) -> None:
    """Write ``run.json`` in a new output folder, or check that an existing one was made with these settings.

    ``run["identity"]`` is compared: the command, the weights' hash, the config shared by all items (less the
    knobs that do not change results) and what else the command depends on (a prior, a VQGAN).
    """
    path = folder / RUN_FILE
    run = json.loads(json.dumps(run, default=str))  # compared as it reads back (tuples as lists)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changes = _differences(old.get("identity", {}), run["identity"])
        if changes:
            shown = "; ".join(changes[:6]) + (" ..." if len(changes) > 6 else "")
            raise RunMismatch(f"--out {folder} holds items made with other settings ({shown}). Mixing them would "
                              f"be silent: give a new --out folder for these settings, or the old settings to "
                              "resume that run")
        return
    if (folder / MANIFEST).is_file() or any(folder.glob(_PART_GLOB)):
        raise RunMismatch(f"--out {folder} has a manifest but no {RUN_FILE}: it was not made by this clipag; give "
                          "a new --out folder")
    tmp = folder / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
