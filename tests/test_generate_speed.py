"""clipag.speed: the encoder fast paths change no maths and leave the model as they found it."""

from __future__ import annotations

import contextlib

import pytest
import torch
from generate_fixtures import one_thread, tiny_model

from clipag.speed import LeanBlock, PatchEmbedMatmul, input_grad_mode


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def features_and_input_grad(model, images, mode):
    x = images.clone().requires_grad_(True)
    with mode:
        features = model.encode_image(x)
        features.square().sum().backward()
    return features.detach(), x.grad


@pytest.mark.parametrize("options", [dict(), dict(class_token_only=False), dict(patch_matmul=True),
                                     dict(lean_blocks=False, patch_matmul=False)])
def test_fast_paths_give_the_same_features_and_image_gradients(options):
    model = tiny_model(seed=1)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref_features, ref_grad = features_and_input_grad(model, images, contextlib.nullcontext())
    model.zero_grad(set_to_none=True)
    features, grad = features_and_input_grad(model, images, input_grad_mode(model, **options))
    assert torch.allclose(features, ref_features, atol=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())  # frozen: no weight gradients inside the block


def test_the_model_is_restored_exactly_even_after_an_error():
    model = tiny_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), input_grad_mode(model, patch_matmul=True):
        assert isinstance(model.visual.conv1, PatchEmbedMatmul)
        blocks = model.visual.transformer.resblocks
        assert all(isinstance(b, LeanBlock) for b in blocks) and blocks[-1].class_token_only
        assert not blocks[0].class_token_only
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        assert model.dtype == torch.float32  # OpenAI's dtype property still reads conv1.weight
        raise RuntimeError("boom")
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert type(model.visual.conv1) is torch.nn.Conv2d
    assert not any(isinstance(b, LeanBlock) for b in model.visual.transformer.resblocks)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_lean_block_matches_the_block_on_all_tokens_and_the_class_token():
    block = tiny_model().visual.transformer.resblocks[0]
    x = torch.randn(3, 17, 64)
    assert torch.allclose(LeanBlock(block)(x), block(x), atol=1e-5)
    assert torch.allclose(LeanBlock(block, class_token_only=True)(x), block(x)[:, :1], atol=1e-5)
    mask = torch.zeros(17, 17)
    assert torch.allclose(LeanBlock(block)(x, attn_mask=mask), block(x, attn_mask=mask), atol=1e-5)


def test_patch_matmul_falls_back_to_the_conv_for_other_sizes():
    conv = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4, bias=False)
    x = torch.rand(2, 3, 10, 10)
    assert PatchEmbedMatmul.supports(conv)
    assert torch.allclose(PatchEmbedMatmul(conv)(x), conv(x))  # 10 is not a multiple of 4: plain conv
    assert not PatchEmbedMatmul.supports(torch.nn.Conv2d(3, 8, kernel_size=4, stride=2, bias=False))
