"""The batched DiffAugment ops: parameter ranges, exact semantics against per-image references, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from clipag import augment as A


def batch(n: int = 6, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_brightness_adds_one_offset_per_image_within_range():
    x = batch(64)
    delta = A.brightness(x, 0.5, gen()) - x
    per_image = delta.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image.abs().max() <= 0.5 and per_image[:, 0].unique().numel() == 64
    assert per_image[:, 0].min() < -0.3 and per_image[:, 0].max() > 0.3  # the whole range is used


def test_saturation_keeps_grey_and_scales_colour_by_0_to_2():
    x = batch(64)
    out = A.saturation(x, generator=gen())
    assert torch.allclose(out.mean(1), x.mean(1), atol=1e-5)  # each pixel's grey value is kept
    ratio = ((out - out.mean(1, keepdim=True)) / (x - x.mean(1, keepdim=True))).flatten(1)
    factors = ratio.median(dim=1).values
    assert factors.min() >= 0 and factors.max() <= 2 and factors.max() > 1.5 and factors.min() < 0.5


def test_contrast_keeps_image_mean_and_scales_by_half_to_one_and_a_half():
    x = batch(64)
    out = A.contrast(x, generator=gen())
    assert torch.allclose(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    factors = ((out - out.mean((1, 2, 3), keepdim=True)).flatten(1).norm(dim=1)
               / (x - x.mean((1, 2, 3), keepdim=True)).flatten(1).norm(dim=1))
    assert factors.min() >= 0.5 - 1e-5 and factors.max() <= 1.5 + 1e-5


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: ``out[i, j] = image[i + dy, j + dx]``, zero outside."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[:, i, j] = image[:, i + dy, j + dx]
    return out


def test_translate_is_an_integer_shift_with_zero_fill_within_an_eighth():
    x = batch(8, size=16) + 0.5  # strictly positive, so zero fill is recognisable
    out = A.translate(x, 0.125, gen(3))
    limit = int(16 * 0.125 + 0.5)
    for image, result in zip(x, out, strict=True):
        matches = [(dy, dx) for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)
                   if torch.equal(shifted(image, dy, dx), result)]
        assert len(matches) == 1


def test_rescale_matches_interpolate_then_pad_or_crop():
    x = batch(3, size=40)
    for ratio in (0.8, 0.93, 1.0, 1.11, 1.2):
        out = A.rescale(x, ratio, ratio)
        new = int(ratio * 40)
        resized = F.interpolate(x, size=new, mode="bilinear", align_corners=False)
        if new < 40:
            a = (40 - new) // 2
            expected = F.pad(resized, (a, 40 - a - new, a, 40 - a - new))
        else:
            a = (new - 40) // 2
            expected = resized[:, :, a:a + 40, a:a + 40]
        assert torch.allclose(out, expected, atol=1e-4), ratio


def border_width(image: torch.Tensor) -> int:
    """Zero rows at the top of a strictly positive image that was zoomed out."""
    return int((image[0].sum(dim=1) == 0).int().cumprod(0).sum())


def test_rescale_draws_one_ratio_per_batch_by_default_and_per_image_on_request():
    x = torch.ones(32, 3, 50, 50)
    shared = A.rescale(x, 0.8, 0.9, generator=gen(1))
    assert len({border_width(im) for im in shared}) == 1
    separate = A.rescale(x, 0.8, 0.9, per_image=True, generator=gen(1))
    widths = {border_width(im) for im in separate}
    assert len(widths) > 1 and all(2 <= w <= 5 for w in widths)  # 50*(1-0.9)/2 .. 50*(1-0.8)/2


def test_cutout_zeroes_one_half_size_square_per_image():
    x = batch(200, size=20) + 0.5
    out = A.cutout(x, 0.5, gen(2))
    holes = out[:, 0] == 0
    assert torch.equal(holes, out[:, 2] == 0)  # same hole in every channel
    assert torch.equal(out[~holes[:, None].expand_as(out)], x[~holes[:, None].expand_as(out)])
    for hole in holes:
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert rows.numel() <= 10 and cols.numel() <= 10  # a square of side 10, maybe cut by the edge
        assert hole.sum() == rows.numel() * cols.numel()  # one rectangle
    assert (holes.sum((1, 2)) == 100).float().mean() > 0.2  # often fully inside
    assert (holes.sum((1, 2)) < 100).any()  # and sometimes hanging over the edge


def test_random_crops_equal_torchvision_random_crop_then_resize():
    x = batch(5, size=32)
    out = A.random_crops(x, 18, 32, gen(4))
    g = gen(4)
    top, left = torch.randint(0, 15, (5,), generator=g), torch.randint(0, 15, (5,), generator=g)
    for i in range(5):
        crop = x[i:i + 1, :, top[i]:top[i] + 18, left[i]:left[i] + 18]
        assert torch.allclose(out[i:i + 1], TF.resize(crop, [32, 32], antialias=True), atol=1e-4)
    with pytest.raises(ValueError, match="crop size"):
        A.random_crops(x, 33, 32)


def test_noise_level_and_sharing():
    x = torch.zeros(16, 3, 32, 32)
    fresh = A.add_noise(x, 0.01, generator=gen())
    assert 0.009 < fresh.std() < 0.011 and not torch.equal(fresh[0], fresh[1])
    shared = A.add_noise(x, 0.01, shared=True, generator=gen())
    assert torch.equal(shared[0], shared[15])
    assert A.add_noise(x, 0) is x


def test_every_op_passes_gradients_to_the_pixels():
    ops = {
        "brightness": lambda x: A.brightness(x, generator=gen()),
        "saturation": lambda x: A.saturation(x, generator=gen()),
        "contrast": lambda x: A.contrast(x, generator=gen()),
        "translate": lambda x: A.translate(x, generator=gen()),
        "rescale": lambda x: A.rescale(x, per_image=True, generator=gen()),
        "cutout": lambda x: A.cutout(x, generator=gen()),
        "crops": lambda x: A.random_crops(x, 12, 16, gen()),
        "resize_to": lambda x: A.resize_to(x, 8),
        "diffaugment": lambda x: A.DiffAugment()(x, gen()),
    }
    for name, op in ops.items():
        x = batch(4, size=16).requires_grad_(True)
        out = op(x)
        out.square().sum().backward()
        assert out.shape[:2] == (4, 3) and x.grad is not None and x.grad.abs().sum() > 0, name
        assert torch.isfinite(x.grad).all(), name


def test_diffaugment_policy_order_determinism_and_validation():
    x = batch(8, size=32)
    aug = A.DiffAugment()
    assert torch.equal(aug(x, gen(5)), aug(x, gen(5)))
    assert not torch.equal(aug(x, gen(5)), aug(x, gen(6)))
    colour_only = A.DiffAugment(policy="color")(x, gen(5))
    by_hand = A.contrast(A.saturation(A.brightness(x, generator=(g := gen(5))), generator=g), generator=g)
    assert torch.equal(colour_only, by_hand)
    assert torch.equal(A.DiffAugment(policy="")(x), x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        A.DiffAugment(policy="color,blur")
