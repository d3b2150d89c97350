"""Tiny taming-format VQGANs for the tests: yaml configs and Lightning-style checkpoints built here."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
import yaml

FIXTURE = json.loads((Path(__file__).parent / "data" / "taming_keys.json").read_text())
TINY = FIXTURE["tiny"]  # ddconfig: 16 px, ch 32, ch_mult [1, 2] (f2), z_channels 8; n_embed 16, embed_dim 4
LPIPS_LOSS = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
              "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0, "disc_weight": 0.8}}


def tiny_config(target: str = "taming.models.vqgan.VQModel", **params) -> dict:
    """A taming yaml's contents for the tiny VQGAN (GumbelVQ gets embed_dim = z_channels, as taming needs)."""
    base = {"embed_dim": TINY["embed_dim"], "n_embed": TINY["n_embed"], "ddconfig": dict(TINY["ddconfig"]),
            "lossconfig": LPIPS_LOSS}
    if target.endswith("GumbelVQ"):
        base.update(embed_dim=8, kl_weight=1e-8, lossconfig={"target": "taming.modules.losses.vqperceptual.DummyLoss"},
                    temperature_scheduler_config={"target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
                                                  "params": {"warm_up_steps": 0, "max_decay_steps": 1000001,
                                                             "lr_start": 0.9, "lr_max": 0.9, "lr_min": 1e-6}})
    base.update(params)
    return {"model": {"base_learning_rate": 4.5e-6, "target": target, "params": base}}


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def fill_like_fixture(model: torch.nn.Module) -> None:
    """The fixture's weight recipe: key i of the sorted names = 0.2 · randn(seed i)."""
    sd = model.state_dict()
    for i, k in enumerate(sorted(sd)):
        sd[k] = 0.2 * torch.randn(sd[k].shape, generator=torch.Generator().manual_seed(i))
    model.load_state_dict(sd)


def _fake_lightning() -> dict[str, types.ModuleType]:
    """Modules named like Lightning's, so a class can be pickled by reference as real checkpoints do."""
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    cls = type("ModelCheckpoint", (), {"__module__": mod.__name__})
    mod.ModelCheckpoint = cls
    return {"pytorch_lightning": types.ModuleType("pytorch_lightning"),
            "pytorch_lightning.callbacks": types.ModuleType("pytorch_lightning.callbacks"), mod.__name__: mod}


def write_lightning_ckpt(path: Path, state_dict: dict[str, torch.Tensor], prefix: str = "",
                         extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A re-enactment of the ``last.ckpt`` taming's training wrote through Lightning 1.x (which does not install
    beside torch 2.14): loss weights (LPIPS, discriminator) beside the model's, optimizer state, counters, and the
    ``ModelCheckpoint`` class pickled by reference as a key of ``callbacks``, as Lightning 1.x does."""
    modules = _fake_lightning()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        weights = {prefix + k: v.clone() for k, v in state_dict.items()}
        weights.update({"loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4),
                        "loss.perceptual_loss.net.slice1.0.weight": torch.randn(8, 3, 3, 3),
                        "loss.logvar": torch.zeros(())})
        weights.update(extra_tensors or {})
        callback = modules["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint
        torch.save({"epoch": 4, "global_step": 12345, "pytorch-lightning_version": "1.0.8", "state_dict": weights,
                    "callbacks": {callback: {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.1),
                                             "best_model_path": "logs/x/last.ckpt"}},
                    "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}],
                    "lr_schedulers": []}, path)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path
