"""clipag.load holds the weights once: the model takes the tensors it read instead of copying them."""

from __future__ import annotations

import pytest
import torch
from generate_fixtures import save_hub_folder

import clipag
import clipag.loader as loader_module
from clipag.weights import resolve


@pytest.fixture
def recorded(monkeypatch):
    """Every state dict ``clipag.load`` resolves, kept so the test can compare storages."""
    seen = []

    def spy(*args, **kwargs):
        resolved = resolve(*args, **kwargs)
        seen.append(dict(resolved.state_dict))
        return resolved

    monkeypatch.setattr(loader_module, "resolve", spy)
    return seen


def test_the_model_owns_the_tensors_it_read(tmp_path, recorded):
    model, _ = clipag.load(str(save_hub_folder(tmp_path / "m")), device="cpu")
    (state_dict,) = recorded
    params = dict(model.state_dict())
    assert set(params) == set(state_dict)
    shared = [k for k in params if params[k].data_ptr() == state_dict[k].data_ptr()]
    assert shared == list(params)  # every tensor: no second copy of any weight
    assert all(p.requires_grad for p in model.parameters())  # still trainable parameters, as before


def test_fp16_weights_keep_fp32_layer_norms(tmp_path, recorded):
    """Assigning must not turn OpenAI's mixed precision into the file's dtype."""
    folder = save_hub_folder(tmp_path / "m")
    model, _ = clipag.load(str(folder), device="cpu", precision="fp16")
    assert model.visual.conv1.weight.dtype == torch.float16
    assert model.visual.ln_pre.weight.dtype == torch.float32
    reference, _ = clipag.load(str(folder), device="cpu")
    assert torch.equal(model.visual.conv1.weight.float(), reference.visual.conv1.weight.half().float())
