"""VGG19 content features for CLIPStyler's content loss, through torchvision's weights API and its cache.

Upstream calls ``models.vgg19(pretrained=True).features`` (torchvision's deprecated API) and runs all 37
layers, though its content loss reads only two of them. Those two are named ``conv4_2`` and ``conv5_2``
there, but the tensors it stores are modified in place by the next ``ReLU(inplace=True)``, so the loss is
really on relu4_2 and relu5_2. Here the network stops at relu5_2 (layer 31 of ``features``) and taps the
same two activations, which is the same loss for less work.

The weights are torchvision's ``VGG19_Weights.IMAGENET1K_V1``: downloaded and hash-checked by torchvision
into ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``, and read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import pickle
import urllib.error
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import VGG19_Weights, vgg19

from clipag import hub
from clipag.model import skip_init

__all__ = ["WEIGHTS", "CONTENT_LAYERS", "VGGContent", "checkpoint_path", "load_vgg_content"]

WEIGHTS = VGG19_Weights.IMAGENET1K_V1
# upstream's name -> index in vgg19().features whose output is the tensor upstream's loss reads (post-ReLU)
CONTENT_LAYERS = {"conv4_2": 22, "conv5_2": 31}


class VGGContent(nn.Module):
    """``vgg19().features[:32]`` with ImageNet normalisation in front; returns the content activations.

    Takes images in [0, 1]; the weights are frozen (only the input gets gradients).
    """

    def __init__(self, features: nn.Sequential, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        depth = max(CONTENT_LAYERS.values()) + 1
        if len(features) < depth:
            raise ValueError(f"need the first {depth} layers of vgg19().features, got {len(features)}")
        self.features = features[:depth].requires_grad_(False).eval()
        # The weights' own preprocessing constants (ImageNet's), not hard-coded ones.
        preset = WEIGHTS.transforms()
        self.register_buffer("mean", torch.tensor(mean or preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or preset.std).view(1, 3, 1, 1), persistent=False)
        self.taps = {index: name for name, index in CONTENT_LAYERS.items()}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        out = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out[self.taps[index]] = x
        return out

    @classmethod
    def random(cls, seed: int = 0) -> VGGContent:
        """Random weights with torchvision's VGG initialisation of the convs (tests, benchmarks; no download)."""
        features = _features()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in features:
                if isinstance(layer, nn.Conv2d):  # what torchvision's VGG._initialize_weights does to convs
                    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
        return cls(features)

    def state_dict_for_torchvision(self) -> dict[str, torch.Tensor]:
        """These weights under torchvision's ``features.N`` keys (the layout of ``vgg19-dcbb9e9d.pth``)."""
        return {f"features.{k}": v for k, v in self.features.state_dict().items()}


def _features() -> nn.Sequential:
    """The first 32 layers of ``vgg19().features``, uninitialised (built without the 120M-weight classifier's
    random init, which costs seconds; callers load or initialise every weight)."""
    with skip_init():
        return vgg19(weights=None).features[: max(CONTENT_LAYERS.values()) + 1]


def checkpoint_path() -> Path:
    """Where torchvision caches the weights: ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(WEIGHTS.url).path)


def _missing_message(path: Path, reason: str) -> str:
    return (f"VGG19 weights for CLIPStyler's content loss are not cached and {reason}. Download "
            f"{WEIGHTS.url} on a machine with internet and put it at {path} (file name {path.name}, in the torch "
            f"hub checkpoints folder: $TORCH_HOME/hub/checkpoints, TORCH_HOME defaults to ~/.cache/torch).")


def load_vgg_content(device: str | torch.device = "cpu", progress: bool = True) -> VGGContent:
    """The pretrained content network on ``device``: torchvision downloads and caches it on first use.

    Offline (``CLIPAG_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) or without a connection, a missing file is an
    error that says which file to put where; a truncated or corrupt cached file is an error naming it.
    """
    path = checkpoint_path()
    if not path.is_file() and hub.is_offline():
        raise hub.OfflineError(_missing_message(path, "offline mode is on"))
    try:
        state = WEIGHTS.get_state_dict(progress=progress, check_hash=True, weights_only=True, map_location="cpu")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise hub.DownloadError(_missing_message(path, f"downloading it failed ({e})")) from e
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        if not path.is_file():  # torchvision's hash check on a fresh download failed
            raise hub.DownloadError(f"downloading {WEIGHTS.url}: {e}") from e
        raise RuntimeError(f"{path} is truncated or corrupt ({e}); delete it and run again to download it, "
                           f"or replace it with a good copy of {WEIGHTS.url}") from e
    features = _features()
    wanted = {f"features.{k}": v for k, v in features.state_dict().items()}
    missing = sorted(k for k in wanted if k not in state or state[k].shape != wanted[k].shape)
    if missing:
        raise RuntimeError(f"{path} is not torchvision's VGG19 checkpoint: missing or misshapen {missing[:4]}")
    features.load_state_dict({k.removeprefix("features."): state[k] for k in wanted})
    return VGGContent(features).to(device)
