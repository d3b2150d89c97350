"""One run per output folder: rewinds, new runs, killed writers and concurrent processes lose nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from finetune_fixtures import write_config
from generate_fixtures import cli_env, one_thread
from safetensors import safe_open
from safetensors.torch import load_file

from clipag.finetune import checkpoint, train
from clipag.finetune.checkpoint import find_latest


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


def _flags(cfg: str, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--model", cfg, "--unlock-text", "--epsilon", "0", "--batch-size", "4", "--steps", str(steps), "--lr",
            "1e-3", "--warmup", "1", "--workers", "0", "--no-progress", "--log-every", "1", "--output-dir", str(out),
            *extra]


def _cli(flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "clipag.finetune", *flags]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the lock) with its sha256: what "nothing was touched" means."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _steps(path: Path) -> list[int]:
    """The steps of the training records (those with a loss) of a metrics file."""
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def _export_step(out: Path) -> dict:
    with safe_open(str(out / "export" / "open_clip_model.safetensors"), "pt") as f:
        return json.loads(f.metadata()["clipag_finetune"])


def test_rewinding_refuses_then_branches_and_keeps_the_checkpoint_it_wrote(tmp_path):
    """Issue 18: after a run reached step 6, resuming step 4 with --keep-checkpoints 1 deleted the step 5 it had
    just written (the abandoned step 6 counted as newer), and --resume latest then picked the abandoned step 6."""
    cfg, out = write_config(tmp_path), tmp_path / "run"
    ckpts = out / "checkpoints"
    train(_flags(cfg, out, 6, "--save-every", "2"))
    before = _snapshot(out)
    rewind = _flags(cfg, out, 5, "--save-every", "1", "--keep-checkpoints", "1", "--resume",
                    str(ckpts / "step_00000004.pt"))
    with pytest.raises(SystemExit, match=r"goes back to step 4, but the run in .* went on past it: 1 checkpoint "
                                         r"\(step_00000006\.pt\); 3 metrics\.jsonl records \(steps 5-6\); an export"):
        train(rewind)
    assert _snapshot(out) == before  # refused: nothing touched

    branch = train([*rewind, "--overwrite"])
    assert sorted(os.listdir(ckpts)) == ["step_00000005.pt"]  # kept: the newest of its own history
    (aside,) = (out / "replaced").iterdir()
    assert sorted(os.listdir(aside / "checkpoints")) == ["step_00000006.pt"]  # moved, not deleted
    assert _snapshot(aside / "export") == {k[7:]: v for k, v in before.items() if k.startswith("export/")}
    assert _steps(out / "metrics.jsonl") == [1, 2, 3, 4, 5]  # one timeline
    assert _steps(aside / "metrics.jsonl") == [5, 6]  # the abandoned steps, kept aside
    run = json.loads((out / "run.json").read_text())
    state = torch.load(ckpts / "step_00000005.pt", weights_only=True)
    assert state["run"]["id"] == run["branch"] and state["run"]["lineage"] == run["lineage"]
    assert [segment[1:] for segment in run["lineage"]] == [[0, 4], [4, None]]
    assert _export_step(out) == {"step": 5, "branch": run["branch"]}
    exported = load_file(str(branch.export_dir / "open_clip_model.safetensors"))
    assert all(torch.equal(exported[k], v.float()) for k, v in state["model"].items())

    # the abandoned checkpoint put back is never resumed: --resume latest refuses to run beside it
    shutil.copy(aside / "checkpoints" / "step_00000006.pt", ckpts / "step_00000006.pt")
    with pytest.raises(SystemExit, match=r"step_00000006\.pt\), not part of the run's history"):
        train(_flags(cfg, out, 7, "--resume", "latest"))
    (ckpts / "step_00000006.pt").unlink()
    train(_flags(cfg, out, 7, "--resume", "latest"))
    assert f"resumed from {ckpts / 'step_00000005.pt'} at step 5\n" in (out / "train.log").read_text()
    assert _steps(out / "metrics.jsonl") == [1, 2, 3, 4, 5, 6, 7]


def test_a_new_run_into_a_used_output_dir_is_refused_and_says_what_it_found(tmp_path):
    """Issue 18: a second run into the same --output-dir overwrote the export, appended to the old metrics.jsonl,
    and --resume latest then resumed from the older run's checkpoint."""
    cfg, out = write_config(tmp_path), tmp_path / "run"
    train(_flags(cfg, out, 3, "--save-every", "2"))
    before = _snapshot(out)
    proc = subprocess.run(_cli(_flags(cfg, out, 2)), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    assert f"{out} already holds a run" in message
    assert ("2 checkpoints (step_00000002.pt, step_00000003.pt); 4 metrics.jsonl records (steps 1-3); an export "
            "(export/)") in message
    assert "--resume latest" in message and "another --output-dir" in message and "--overwrite" in message
    assert _snapshot(out) == before

    old_branch = json.loads((out / "run.json").read_text())["branch"]
    second = train(_flags(cfg, out, 2, "--overwrite"))
    (aside,) = (out / "replaced").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "export", "metrics.jsonl", "train.log"]
    assert _snapshot(aside) == {k: v for k, v in before.items() if k != "run.json"}  # all of it, as it was
    assert _steps(out / "metrics.jsonl") == [1, 2]  # nothing appended to the old run's records
    branch = json.loads((out / "run.json").read_text())["branch"]
    assert branch != old_branch and _export_step(out) == {"step": 2, "branch": branch}
    path, state = find_latest(out)
    assert path.name == "step_00000002.pt" and state["run"]["id"] == branch
    assert second.export_dir == out / "export"


def test_resuming_a_finished_run_touches_nothing_and_a_missing_export_is_written(tmp_path):
    """A preemptible job re-run after it finished must not re-export, log a second "done", or fail."""
    cfg, out = write_config(tmp_path), tmp_path / "run"
    train(_flags(cfg, out, 3))
    before = _snapshot(out)
    again = train(_flags(cfg, out, 3, "--resume", "latest"))
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k != "train.log"} == {k: v for k, v in before.items() if k != "train.log"}
    assert again.export_dir == out / "export" and "nothing to train" in (out / "train.log").read_text()
    shutil.rmtree(out / "export")  # killed between the last checkpoint and the export
    train(_flags(cfg, out, 3, "--resume", "latest"))
    assert _export_step(out)["step"] == 3
    done = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("event") == "done"]
    assert len(done) == 1  # the first run's; the export was missing, not the record


def test_metrics_a_killed_run_logged_after_its_last_checkpoint_are_moved_aside(tmp_path):
    """A killed process logs steps past its last checkpoint (and may tear its last line); a resumed run used to
    append after them: duplicated steps, and a torn line glued to the next record."""
    cfg, out = write_config(tmp_path), tmp_path / "run"
    train(_flags(cfg, out, 4, "--save-every", "4", "--no-export"))
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    done = lines.pop()  # the killed process never got to "done"
    assert json.loads(done)["event"] == "done"
    tail = [json.dumps({"step": 5, "loss": 9.0}) + "\n", json.dumps({"step": 6, "loss": 9.0}) + "\n", '{"step": 7, "lo']
    metrics.write_text("".join(lines + tail))
    train(_flags(cfg, out, 6, "--resume", "latest", "--no-export"))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line parses
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(r.get("loss") != 9.0 for r in records)
    (aside,) = (out / "replaced").iterdir()
    assert (aside / "metrics.jsonl").read_text() == "".join(tail) + "\n"
    assert "3 metrics.jsonl records (steps 5-6)" in (out / "train.log").read_text()


def test_temp_files_of_a_killed_checkpoint_writer_are_removed_and_nothing_else(tmp_path):
    """Issue 18: a process killed while saving left .step_N.pt.PID.tmp in the checkpoint folder forever."""
    cfg, out = write_config(tmp_path), tmp_path / "run"
    train(_flags(cfg, out, 2, "--save-every", "1", "--no-export"))
    ckpts = out / "checkpoints"
    # a real process, stopped for good inside checkpoint.save after its temp file was written
    writer = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time, torch
from clipag.finetune import checkpoint
os.fsync = lambda fd: (print("writing", flush=True), time.sleep(600))
state = torch.load({str(ckpts / 'step_00000002.pt')!r}, weights_only=True)
checkpoint.save(dict(state, step=3), {str(out)!r}, 3)
"""], stdout=subprocess.PIPE, text=True, env=cli_env())
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL
    stale = ckpts / f".step_00000003.pt.{writer.pid}.tmp"
    assert stale.is_file() and stale.stat().st_size > 0
    # beside it: a live process's temp file, a link named like a temp file, and files that are not temp files
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = ckpts / f".step_00000004.pt.{alive.pid}.tmp"
        live.write_bytes(b"in flight")
        outside = tmp_path / "outside.bin"
        outside.write_bytes(b"not the run's")
        link = ckpts / f".step_00000005.pt.{writer.pid}.tmp"
        link.symlink_to(outside)
        others = [ckpts / "notes.txt", ckpts / f".notes.{writer.pid}.tmp", out / f".other.{writer.pid}.tmp"]
        for other in others:
            other.write_text("mine")
        train(_flags(cfg, out, 3, "--resume", "latest", "--no-export"))
        assert not stale.exists()
        assert live.read_bytes() == b"in flight" and link.is_symlink() and outside.read_bytes() == b"not the run's"
        assert all(other.read_text() == "mine" for other in others)
        log = (out / "train.log").read_text()
        assert f"removed {stale.name} from {ckpts}: a temp file of a killed process" in log
        assert f"left {live} alone: its process is alive" in log
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in ckpts.glob("step_*.pt")) == ["step_00000002.pt", "step_00000003.pt"]


def test_a_checkpoint_is_never_written_through_a_link_at_its_temp_name(tmp_path):
    """The temp file is created exclusively: a link planted at its name (a shared, group-writable folder) is
    refused, and the file it points to is left as it was."""
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (ckpts / f".step_00000001.pt.{os.getpid()}.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError, match="not a file this process wrote"):
        checkpoint.save({"step": 1, "model": {"w": torch.ones(3)}}, out, 1)
    assert victim.read_text() == "precious" and not (ckpts / "step_00000001.pt").exists()
    (ckpts / f".step_00000001.pt.{os.getpid()}.tmp").unlink()
    (ckpts / f".step_00000001.pt.{os.getpid()}.tmp").write_bytes(b"left by an earlier process with our PID")
    assert checkpoint.save({"step": 1, "model": {"w": torch.ones(3)}}, out, 1).is_file()


def _wait_for(path: Path, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read() if proc.stderr else ''}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)


def test_a_second_process_on_the_same_output_dir_stops_and_a_killed_ones_lock_is_not_stale(tmp_path):
    cfg, out = write_config(tmp_path), tmp_path / "run"
    env = cli_env()
    first = subprocess.Popen(_cli(_flags(cfg, out, 100000, "--save-every", "5", "--resume", "latest")), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "checkpoints" / "step_00000005.pt", first, "the first checkpoint")
        second = subprocess.run(_cli(_flags(cfg, out, 10, "--resume", "latest")), env=env, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode != 0
        assert f"{out} is in use: another clipag.finetune process holds {out / '.lock'}" in second.stderr
        assert first.poll() is None  # the first run goes on, undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    reached = max(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("step_*.pt"))
    third = subprocess.run(_cli(_flags(cfg, out, reached + 2, "--resume", "latest", "--no-export")), env=env,
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"at step {reached}\n" in third.stderr  # the dead process's lock did not block


def test_a_killed_branch_resumes_its_own_history_with_the_same_weights(tmp_path):
    """A rewound run killed with SIGKILL and resumed with --resume latest continues the branch (never the
    abandoned later steps) and ends bit-identical to the same branch run without interruption."""
    cfg, out = write_config(tmp_path), tmp_path / "run"
    train(_flags(cfg, out, 8, "--save-every", "4", "--no-export"))
    origin = tmp_path / "step_4.pt"
    shutil.copy(out / "checkpoints" / "step_00000004.pt", origin)
    branch = _flags(cfg, out, 60, "--save-every", "2", "--log-every", "2", "--resume",
                    str(out / "checkpoints" / "step_00000004.pt"), "--overwrite")
    env = cli_env()
    victim = subprocess.Popen(_cli(branch), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoints" / "step_00000006.pt", victim, "the branch's first checkpoint")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (out / "export").exists()  # it died mid-run
    resumed = subprocess.run(_cli([*branch[:branch.index("--resume")], "--resume", "latest"]), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    start = int(resumed.stderr.split("at step ")[1].split()[0])
    assert 6 <= start < 60 and start % 2 == 0  # the branch's own checkpoint, not the abandoned step 8
    uninterrupted = train(_flags(cfg, tmp_path / "straight", 60, "--save-every", "2", "--log-every", "2",
                                 "--resume", str(origin)))
    expected = load_file(str(uninterrupted.export_dir / "open_clip_model.safetensors"))
    again = load_file(str(out / "export" / "open_clip_model.safetensors"))
    assert expected.keys() == again.keys()
    for key in expected:
        torch.testing.assert_close(again[key], expected[key], rtol=0, atol=1e-6, msg=key)
    assert _steps(out / "metrics.jsonl") == [1, 2, 3, 4, *range(6, 61, 2)]


def test_a_torn_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(tmp_path):
    """A checkpoint torn by something else (a copy, a full disk) is never resumed, nor overwritten by name."""
    cfg, out = write_config(tmp_path), tmp_path / "run"
    train(_flags(cfg, out, 4, "--save-every", "2", "--no-export"))
    newest = out / "checkpoints" / "step_00000004.pt"
    torn = newest.read_bytes()[:1000]
    newest.write_bytes(torn)
    train(_flags(cfg, out, 5, "--save-every", "2", "--resume", "latest", "--no-export"))
    log = (out / "train.log").read_text()
    assert f"checkpoint {newest} is unreadable" in log
    assert f"resumed from {out / 'checkpoints' / 'step_00000002.pt'} at step 2\n" in log
    (aside,) = (out / "replaced").iterdir()
    assert (aside / "checkpoints" / "step_00000004.pt").read_bytes() == torn
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["step_00000004.pt", "step_00000005.pt"]
    assert _steps(out / "metrics.jsonl") == [1, 2, 3, 4, 5]


def test_tensorboard_hides_what_a_killed_run_logged_after_its_last_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, out = write_config(tmp_path), tmp_path / "run"
    first = train(_flags(cfg, out, 6, "--save-every", "4", "--tensorboard", "--no-export"))
    (out / "checkpoints" / "step_00000006.pt").unlink()  # as if killed after logging step 6, before saving it
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:-1]))
    second = train(_flags(cfg, out, 6, "--save-every", "4", "--tensorboard", "--no-export", "--resume", "latest"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = events.Scalars("loss")
    assert [e.step for e in losses] == [1, 2, 3, 4, 5, 6]  # steps 5 and 6 once: the resumed run's
    assert [e.value for e in losses[4:]] == pytest.approx([r["loss"] for r in second.history])
    assert [r["step"] for r in first.history] == [1, 2, 3, 4, 5, 6]
