"""Tiny CLIPs for the Hugging Face tests: clipag/open_clip folders, transformers repos written by transformers' own
``save_pretrained`` (the real writer) and placed in an offline Hugging Face cache, and a stand-in Hub for uploads."""

from __future__ import annotations

import base64
import copy
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# Widths are multiples of 64 so heads follow OpenAI's rule too; 64 px, 16 px patches: fast and shaped like ViT-B.
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
REVISION = "fedcba9876543210fedcba9876543210fedcba98"


def tiny_config(quick_gelu: bool) -> dict[str, Any]:
    return {**copy.deepcopy(TINY), "quick_gelu": quick_gelu}


def save_clipag_folder(folder: Path, config: dict[str, Any], seed: int = 0,
                       preprocess_cfg: dict[str, Any] | None = None) -> Path:
    """An open_clip ``hf-hub:`` layout folder with random weights (what ``clipag.finetune`` exports)."""
    from safetensors.torch import save_file

    from clipag.model import build_model

    torch.manual_seed(seed)
    model = build_model(config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config,
                                                              "preprocess_cfg": preprocess_cfg or {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def transformers_clip(seed: int = 0, hidden_act: str = "quick_gelu", image_size: int = 64, **config: Any) -> Any:
    """A random transformers ``CLIPModel`` built by transformers itself (its own init, its own config)."""
    import transformers

    torch.manual_seed(seed)
    text = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
            "hidden_act": hidden_act, **config.pop("text_config", {})}
    vision = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": image_size, "patch_size": 16, "hidden_act": hidden_act, **config.pop("vision_config", {})}
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32,
                                                           **config))
    with torch.no_grad():  # transformers initialises the biases and LayerNorms to constants: make every weight count
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model.eval()


def install_hf_repo(hf_cache: Path, repo: str, folder: Path, revision: str = REVISION) -> Path:
    """Copy ``folder`` into the Hugging Face cache as ``repo``'s ``main`` (the layout huggingface_hub writes)."""
    base = Path(hf_cache) / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / revision
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(revision)
    return snapshot


def mark_absent(hf_cache: Path, repo: str, *names: str, revision: str = REVISION) -> None:
    """Record files as absent, as an online lookup that got a 404 leaves it in the cache."""
    no_exist = Path(hf_cache) / f"models--{repo.replace('/', '--')}" / ".no_exist" / revision
    no_exist.mkdir(parents=True, exist_ok=True)
    for name in names:
        (no_exist / name).touch()


class _StandInHub(http.server.BaseHTTPRequestHandler):
    """The Hub endpoints ``HfApi.create_repo`` and ``upload_folder`` call, answering as the Hub does: files are
    asked to come inline ("regular" upload mode), so the commit carries every byte and the test can compare them."""

    repos: dict[str, dict[str, bytes]]
    requests: list[str]

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, obj: Any, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.requests.append(f"GET {self.path}")
        self._reply({"error": "not found"}, 404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append(f"POST {self.path}")
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request.get('organization')}/{request['name']}"
            self.repos.setdefault(repo, {})
            self._reply({"url": f"{base}/{repo}", "name": repo})
        elif self.path == "/api/validate-yaml":
            self._reply({"errors": [], "warnings": []})
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]})
        elif "/commit/" in self.path:
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.repos.setdefault(repo, {})[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            self._reply({"commitUrl": f"{base}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40,
                         "pullRequestUrl": None})
        else:
            self._reply({"error": "not found"}, 404)


@contextmanager
def stand_in_hub() -> Iterator[tuple[str, dict[str, dict[str, bytes]], list[str]]]:
    """``(endpoint, repos, requests)``: a Hub on 127.0.0.1 whose repos fill with what is uploaded."""
    handler = type("Hub", (_StandInHub,), {"repos": {}, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.repos, handler.requests
    finally:
        server.shutdown()
