"""The shared PGD: stays in the ε-ball and in [0, 1], raises the loss, leaves weights' gradients alone."""

import pytest
import torch

from clipag.attacks import default_step_size, perturbation_norm, pgd


def _linear_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))


@pytest.mark.parametrize("norm,eps", [("l2", 0.5), ("linf", 4 / 255)])
def test_pgd_respects_budget_and_box_and_increases_loss(norm, eps):
    model = _linear_model()
    images = torch.rand(16, 3, 8, 8)
    images[0] = 1.0  # a saturated image: the box constraint must bind
    labels = torch.randint(0, 5, (16,))
    loss = lambda x: torch.nn.functional.cross_entropy(model(x), labels, reduction="sum")
    adv = pgd(loss, images, norm=norm, epsilon=eps, steps=10, generator=torch.Generator().manual_seed(0))
    delta = adv - images
    assert (perturbation_norm(delta, norm) <= eps * (1 + 1e-5)).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert loss(adv) > loss(images) + 0.1
    assert model[1].weight.grad is None  # only input gradients were computed
    assert not adv.requires_grad


def test_pgd_zero_epsilon_is_identity_and_seeded_start_is_reproducible():
    model = _linear_model()
    images = torch.rand(4, 3, 8, 8)
    loss = lambda x: model(x).sum()
    assert torch.equal(pgd(loss, images, norm="l2", epsilon=0.0, steps=5), images)
    runs = [pgd(loss, images, norm="l2", epsilon=0.3, steps=2, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="norm"):
        pgd(loss, images, norm="l1", epsilon=0.1, steps=1)


def test_default_step_size_matches_fare():
    assert default_step_size(4 / 255, 10) == pytest.approx(1 / 255)
