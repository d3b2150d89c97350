"""Shared fixtures: tiny random CLIPs in every file format, an offline Hub cache, a local HTTP server."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# Ctrl-C tests need a live SIGINT. A suite started in the background (nohup, `&`) inherits an ignored one;
# a Python handler here also gives child processes a default one (caught signals reset on exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# OpenAI's builder needs widths that are multiples of 64 (heads = width // 64).
TINY_OPENAI = dict(embed_dim=32, image_resolution=224, vision_layers=2, vision_width=64, vision_patch_size=32,
                   context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                   transformer_layers=2)


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """Every test gets its own clipag cache and an empty, offline-capable Hugging Face cache."""
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CLIPAG_CACHE", str(root / "clipag"))
    monkeypatch.delenv("CLIPAG_OFFLINE", raising=False)
    monkeypatch.delenv("CLIPAG_PRECISION", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the tests never touch the network
    return root


@pytest.fixture(scope="session")
def openai_reference():
    """A tiny model from the reference package, with fp16-representable weights as OpenAI ships them."""
    import clip.model

    torch.manual_seed(0)
    model = clip.model.CLIP(**TINY_OPENAI).eval()
    clip.model.convert_weights(model)
    return model.float()


@pytest.fixture(scope="session")
def openai_files(openai_reference, tmp_path_factory):
    """The reference weights as a state dict, a TorchScript archive and a safetensors file."""
    import clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("openai")
    state_dict = openai_reference.state_dict()
    torch.save(state_dict, folder / "state_dict.pt")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "weights.safetensors"))
    image, text = torch.randn(1, 3, 224, 224), clip.tokenize(["a"])
    with pytest.warns(Warning):
        traced = torch.jit.trace(openai_reference, (image, text))
    traced.save(str(folder / "torchscript.pt"))
    return {"state_dict": folder / "state_dict.pt", "torchscript": folder / "torchscript.pt",
            "safetensors": folder / "weights.safetensors"}


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (the stdlib handler ignores Range)."""

    ignore_range = False
    requests: list[dict] = []
    seconds_per_mb = 0.0  # > 0 slows responses down, so that concurrent clients overlap

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        header = self.headers.get("Range")
        type(self).requests.append({"path": self.path, "range": header})
        start = int(header.split("=")[1].split("-")[0]) if header and not self.ignore_range else 0
        if start >= size and header:
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        with open(path, "rb") as f:  # streamed: the real-size replicas are 1.3 GB
            f.seek(start)
            if not self.seconds_per_mb:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
            while self.seconds_per_mb and (chunk := f.read(1 << 18)):
                self.wfile.write(chunk)
                time.sleep(self.seconds_per_mb / 4)


@pytest.fixture
def http_server(tmp_path):
    """``(base_url, folder, handler_class)`` for a server on 127.0.0.1 serving ``folder``."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_RangeHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a, **k: handler(*a, directory=str(folder), **k))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder, handler
    server.shutdown()


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """``python -m clipag.demo --quick`` (~3 min on a free core), run once as the README's quick start runs it: in
    a fresh folder, offline, as a user types it. ``.cwd`` is that folder (the demo wrote ``runs/pag_demo_quick``
    there), ``.out`` the demo's folder; ``.stdout``/``.stderr`` what it printed. tests/test_demo.py checks its
    numbers, tests/test_readme.py the quick start that continues in ``.cwd``."""
    cwd = tmp_path_factory.mktemp("quickstart")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPAG_CACHE": str(cwd / ".cache" / "clipag"),
           "HF_HUB_CACHE": str(cwd / ".cache" / "hf"), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "clipag.demo", "--quick"]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SimpleNamespace(cwd=cwd, out=cwd / "runs" / "pag_demo_quick", env=env, argv=argv, stdout=proc.stdout,
                           stderr=proc.stderr)
