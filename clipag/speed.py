"""Run a CLIP image encoder fast when only the *input* needs gradients (pixel optimization).

Measured on CPU with ViT-B/32 (DESIGN §8), each of these matters when the weights are frozen:

* frozen weights: no 88M-parameter weight gradients every step;
* sequence-first attention: with ``batch_first`` ``nn.MultiheadAttention`` transposes its input to a
  non-contiguous view, and once the weights no longer require grad, ``linear`` on that view stops
  folding into one matmul and runs a batched matmul per token position instead;
* the patch embedding (a conv whose stride equals its kernel) as reshape + matmul: the conv's input
  gradient on CPU costs several times the equivalent matmul;
* the last block for the class token only: a ViT that pools its class token never reads the other tokens'
  outputs of its last block, so their attention queries and MLP (about 7% of ViT-B/32's work) are skipped.

:func:`input_grad_mode` applies them for the duration of a ``with`` block and restores the model exactly
afterwards, so a caller's model is never left modified. The maths is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassTokenBlock", "PatchEmbedMatmul", "input_grad_mode"]


class PatchEmbedMatmul(nn.Module):
    """A drop-in for a bias-free ``Conv2d(kernel=stride=p, padding=0)`` computed as a matmul over patches."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    @property
    def weight(self) -> nn.Parameter:  # ``model.dtype`` reads ``visual.conv1.weight``
        return self.conv.weight

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (isinstance(conv, nn.Conv2d) and conv.bias is None and conv.groups == 1
                and conv.kernel_size == conv.stride and conv.padding in ((0, 0), "valid")
                and conv.dilation == (1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ph, pw = self.conv.kernel_size
        gh, gw = h // ph, w // pw
        if gh * ph != h or gw * pw != w:
            return self.conv(x)
        patches = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)
        tokens = F.linear(patches, self.conv.weight.reshape(self.conv.out_channels, -1))  # (B, L, width)
        return tokens.transpose(1, 2).unflatten(2, (gh, gw))  # the conv's (B, width, gh, gw) layout


class ClassTokenBlock(nn.Module):
    """Wraps a ViT's last ``ResidualAttentionBlock`` to compute its output for the class token (index 0) only.

    Keys and values still come from every token, so the class token's output is bit-for-bit the maths of the
    full block; the returned sequence has length 1. Valid only where nothing reads the other tokens.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    @staticmethod
    def supports(visual: nn.Module) -> bool:
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        last = blocks[-1] if blocks is not None and len(blocks) else None
        return (last is not None and isinstance(getattr(last, "attn", None), nn.MultiheadAttention)
                and not hasattr(last, "ln_1_kv") and getattr(visual, "pool_type", None) == "tok"
                and getattr(visual, "attn_pool", None) is None and not getattr(visual, "output_tokens", False)
                and not getattr(visual, "final_ln_after_pool", False))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b = self.block
        seq_dim = 1 if b.attn.batch_first else 0
        normed = b.ln_1(x)
        query = normed.narrow(seq_dim, 0, 1)
        attended = b.attn(query, normed, normed, need_weights=False, attn_mask=attn_mask)[0]
        cls = x.narrow(seq_dim, 0, 1) + b.ls_1(attended)
        return cls + b.ls_2(b.mlp(b.ln_2(cls)))


def _attention_blocks(module: nn.Module) -> list[tuple[nn.Module, nn.MultiheadAttention]]:
    """open_clip ``Transformer``s made of standard blocks, with their ``nn.MultiheadAttention`` layers."""
    found = []
    for sub in module.modules():
        blocks = getattr(sub, "resblocks", None)
        if blocks is None or not getattr(sub, "batch_first", False):
            continue
        attns = [getattr(block, "attn", None) for block in blocks]
        if all(isinstance(a, nn.MultiheadAttention) and a.batch_first for a in attns):
            found.extend((sub, a) for a in attns)
    return found


@contextlib.contextmanager
def input_grad_mode(model: nn.Module, *, freeze: bool = True, sequence_first: bool = True,
                    patch_matmul: bool | None = None, class_token_only: bool = True) -> Iterator[nn.Module]:
    """Prepare ``model`` (a CLIP) for image-gradient work; everything is restored on exit.

    ``patch_matmul=None`` uses the matmul patch embedding on CPU only (on GPU the conv is already fast).
    Inside the block only pooled image features are valid (``class_token_only`` drops the last block's
    other tokens) and the model is in eval mode.
    """
    visual = getattr(model, "visual", model)
    saved_grad = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    transformers = {id(t): t for t, _ in _attention_blocks(visual)} if sequence_first else {}
    attentions = [a for _, a in _attention_blocks(visual)] if sequence_first else []
    conv = getattr(visual, "conv1", None)
    if patch_matmul is None:
        device = next(visual.parameters()).device
        patch_matmul = device.type == "cpu"
    swap_conv = patch_matmul and PatchEmbedMatmul.supports(conv)
    blocks = visual.transformer.resblocks if class_token_only and ClassTokenBlock.supports(visual) else None
    last = blocks[-1] if blocks is not None else None
    was_training = model.training
    try:
        model.eval()
        for p, _ in saved_grad:
            p.requires_grad_(False)
        for t in transformers.values():
            t.batch_first = False  # open_clip's Transformer then feeds a contiguous (L, N, D) tensor
        for a in attentions:
            a.batch_first = False
        if swap_conv:
            visual.conv1 = PatchEmbedMatmul(conv)
        if blocks is not None:
            blocks[-1] = ClassTokenBlock(last)
        yield model
    finally:
        if blocks is not None:
            blocks[-1] = last
        if swap_conv:
            visual.conv1 = conv
        for a in attentions:
            a.batch_first = True
        for t in transformers.values():
            t.batch_first = True
        for p, flag in saved_grad:
            p.requires_grad_(flag)
        model.train(was_training)
