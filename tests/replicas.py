"""Faithful replicas of the real files clipag reads, with random weights.

Each writer says whose code wrote the real artifact and how the replica is made: by that same code path where
it installs here, or by the closest re-enactment of it where it cannot (with what differs). A fixture that no
real code would write proves nothing, so the tests of real formats use these and nothing simpler.

- :func:`open_clip_2023_checkpoint`: ``CLIPAG_ViTB32.pt`` (open_clip's training loop, 2023). Re-enacted.
- :func:`open_clip_train_checkpoint`: open_clip >= 2.30's ``epoch_N.pt``. Written by ``open_clip_train.main``.
- :func:`open_clip_hub_bin_repo`: a Hub repo with only ``open_clip_pytorch_model.bin`` + config (chs20's, timm's
  CLIP repos). Written by open_clip's ``push_to_hf_hub.save_for_hf``.
- OpenAI TorchScript archives: ``conftest.openai_files`` (``torch.jit.trace`` + ``save`` of the reference
  package's model, as OpenAI's release archives are traced modules).
- Lightning 1.x VQGAN ``.ckpt``: ``vqgan_fixtures.write_lightning_ckpt`` (re-enacted; Lightning 1.x does not
  install beside torch 2.14).
- torchvision's ``vgg19-dcbb9e9d.pth``: ``clipstyler/clipstyler_fixtures.write_random_vgg19`` (``torch.save`` in
  the pre-1.6 format the 2017 file has).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

__all__ = ["open_clip_2023_checkpoint", "open_clip_train_checkpoint", "open_clip_hub_bin_repo",
           "numpy1_pickle_module", "code_running_checkpoint"]


class _Numpy1Pickler(pickle._Pickler):
    """Pickles as numpy 1.x did: numpy 2 moved ``numpy.core`` to ``numpy._core``, and a pickle names the module.

    The 2023 file was written under numpy 1.x, so its numbers are ``numpy.core.multiarray.scalar`` calls; numpy
    2.x here would write ``numpy._core...``. Everything else is byte for byte what ``pickle`` writes.
    """

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core"):
            spelled = "numpy.core" + module.removeprefix("numpy._core")
            self.write(pickle.GLOBAL + f"{spelled}\n{name or obj.__qualname__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def numpy1_pickle_module() -> types.ModuleType:
    """A ``pickle_module`` for ``torch.save`` that writes numpy 1.x's global names."""
    module = types.ModuleType("numpy1_pickle")
    module.Pickler, module.Unpickler, module.load = _Numpy1Pickler, pickle.Unpickler, pickle.load
    return module


def _cosine_lr_2023(base_lr: float, warmup: int, steps: int, step: int):
    """open_clip's ``cosine_lr`` before commit 5f83962 (2024-11-23): ``np.cos``, so a ``numpy.float64`` past
    warmup (a Python float during warmup)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, steps - warmup
    return 0.5 * (1 + np.cos(np.pi * e / es)) * base_lr


def open_clip_2023_checkpoint(path: str | os.PathLike, model_cfg: dict, *, seed: int = 0, steps: int = 2,
                              batch: int = 2, name: str = "2023_01_01-00_00_00-model_ViT-B-32-lr_1e-05-b_128-j_8-p_amp"
                              ) -> dict[str, torch.Tensor]:
    """Re-enact the 2023 open_clip training loop that wrote ``CLIPAG_ViTB32.pt``; return the weights saved.

    As that loop did: the model from an open_clip config (GELU for ``ViT-B-32``); the text tower frozen, so
    AdamW (open_clip's two groups: no weight decay on gains and biases; betas 0.9/0.98, eps 1e-6) holds state
    for the image tower only; learning rates from the ``np.cos`` schedule; AMP with a ``GradScaler``; a few
    real steps of the contrastive loss; and ``torch.save`` of ``{"epoch", "name", "state_dict", "optimizer",
    "scaler"}`` where ``state_dict`` is the DDP-wrapped model's (``module.`` keys), pickled under numpy 1.x.
    Differences: random data and weights, CPU autocast (bf16) instead of CUDA fp16 (the saved types are the same:
    fp32 weights, Python-float scaler state), and DDP's ``module.`` prefix added by hand instead of by a
    process group.
    """
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    for param_name, param in model.named_parameters():
        param.requires_grad_(param_name.startswith("visual."))
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
                                   {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.1}],
                                  lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    scaler = torch.amp.GradScaler("cpu")
    loss_fn = open_clip.ClipLoss()
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    for step in range(steps):
        lr = _cosine_lr_2023(1e-5, 1, steps, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = torch.rand(batch, 3, size, size)
        texts = torch.randint(1, 1000, (batch, model_cfg["text_cfg"].get("context_length", 77)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image_features, text_features, logit_scale = model(images, texts)
            loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    state_dict = {f"module.{k}": v for k, v in model.state_dict().items()}
    checkpoint = {"epoch": 1, "name": name, "state_dict": state_dict, "optimizer": optimizer.state_dict(),
                  "scaler": scaler.state_dict()}
    lrs = [group["lr"] for group in checkpoint["optimizer"]["param_groups"]]
    assert all(type(lr) is np.float64 for lr in lrs), lrs  # the point of the replica
    torch.save(checkpoint, path, pickle_module=numpy1_pickle_module())
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


_OPEN_CLIP_TRAIN = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""


def open_clip_train_checkpoint(folder: str | os.PathLike, model_cfg: dict, *, samples: int = 8) -> Path:
    """Run open_clip >= 2.30's own training entry point (``open_clip_train.main``) on its synthetic data for
    one epoch with AMP and a locked text tower, and return the ``epoch_1.pt`` it wrote (math.cos learning
    rates: Python floats; keys without ``module.``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "replica-tiny.json").write_text(json.dumps(model_cfg))
    args = [str(folder / "replica-tiny.json"), "--model", "replica-tiny", "--dataset-type", "synthetic",
            "--train-num-samples", str(samples), "--batch-size", "4", "--epochs", "1", "--workers", "0",
            "--lr", "1e-3", "--warmup", "1", "--precision", "amp", "--lock-text", "--lock-text-freeze-layer-norm",
            "--save-frequency", "1", "--report-to", "", "--logs", str(folder / "logs"), "--name", "run"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TORCH_LOGS": "-all"}
    result = subprocess.run([sys.executable, "-c", _OPEN_CLIP_TRAIN, *args], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=600)
    checkpoint = folder / "logs" / "run" / "checkpoints" / "epoch_1.pt"
    assert result.returncode == 0 and checkpoint.is_file(), result.stderr[-3000:]
    return checkpoint


class _NoTokenizerFiles:
    """chs20's and timm's CLIP repos hold no tokenizer files: ``save_for_hf`` asks the tokenizer to write none."""

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        pass


def open_clip_hub_bin_repo(snapshot: str | os.PathLike, model_cfg: dict, preprocess_cfg: dict, *,
                           seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a repo as open_clip's ``push_to_hf_hub`` writes it without safetensors: ``open_clip_config.json``
    and ``open_clip_pytorch_model.bin`` (a ``torch.save``d state dict). Returns the weights."""
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    open_clip.set_model_preprocess_cfg(model, preprocess_cfg)  # as create_model does; save_for_hf reads it
    save_for_hf(model, _NoTokenizerFiles(), model_cfg, str(snapshot), safe_serialization=False)
    return model.state_dict()


class _RunsCode:
    """Unpickling this calls ``os.system``: what an attacker hides in a checkpoint."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def code_running_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], marker: Path) -> None:
    """A 2023-style training checkpoint whose optimizer state hides ``os.system("touch MARKER")``."""
    optimizer = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2),
                               "exp_avg_sq": _RunsCode(f"touch {marker}")}},
                 "param_groups": [{"lr": np.float64(1e-5), "params": [0]}]}
    torch.save({"epoch": 1, "name": "x", "state_dict": {f"module.{k}": v for k, v in state_dict.items()},
                "optimizer": optimizer}, path, pickle_module=numpy1_pickle_module())
