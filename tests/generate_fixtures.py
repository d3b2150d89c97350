"""Tiny CLIPs for the generation and adapter tests (small canvases keep a step in the milliseconds), and the
Ctrl-C check their command-line tests share."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from clipag.model import build_model

# 32 px, 4x4 patches of 8 px: 17 tokens, two blocks per tower.
TINY_32 = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                           "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def tiny_model(size: int = 32, seed: int = 0) -> torch.nn.Module:
    config = json.loads(json.dumps(TINY_32))
    config["vision_cfg"]["image_size"] = size
    torch.manual_seed(seed)
    return build_model(config)


def save_hub_folder(folder: Path, size: int = 32, seed: int = 0, preprocess_cfg: dict | None = None) -> Path:
    """A Hub-layout folder (``open_clip_config.json`` + ``open_clip_model.safetensors``) ``clipag.load`` reads."""
    from safetensors.torch import save_file

    config = json.loads(json.dumps(TINY_32))
    config["vision_cfg"]["image_size"] = size
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config,
                                                                     "preprocess_cfg": preprocess_cfg or {}}))
    state = {k: v.contiguous() for k, v in tiny_model(size, seed).state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's waiting for a
    descheduled second thread made each tiny step ~40x slower; run them single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment a ``clipag`` subprocess gets in the tests: one thread, offline, unbuffered."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def _default_sigint() -> None:
    """A shell's background job ignores SIGINT, and an ignored SIGINT is inherited: Python would then never
    raise KeyboardInterrupt. Give the child the default handling, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_once_running(args: list[str], env: dict[str, str], start_timeout: float = 90,
                           exit_timeout: float = 60) -> tuple[int, str, str]:
    """Run ``python -m clipag.cli ARGS``, press Ctrl-C once its progress bar shows a loss, and return
    ``(exit code, stdout, stderr)``. Fails if no step ran within ``start_timeout`` seconds."""
    proc = subprocess.Popen([sys.executable, "-m", "clipag.cli", *args], preexec_fn=_default_sigint, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + start_timeout
        while "loss=" not in "".join(stderr) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # wait until steps are running
        assert "loss=" in "".join(stderr), "no step ran: " + "".join(stderr)[-2000:]
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=exit_timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout = proc.stdout.read()
    reader.join(timeout=10)
    return code, stdout, "".join(stderr)
