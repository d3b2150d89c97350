"""Run a CLIP image encoder fast when only the *input* needs gradients (pixel optimization).

Measured on CPU with ViT-B/32 (``benchmarks/generate.py``; docs/generate.md), each of these matters once the
weights are frozen:

* frozen weights: no 88M-parameter weight gradients every step;
* lean attention blocks: ``nn.MultiheadAttention(batch_first=True)`` transposes its input to a
  non-contiguous view, and with frozen weights ``linear`` on that view no longer folds into one matmul
  (it runs one per token position); it also packs and unpacks q/k/v with copies and zero-filled gradient
  buffers. :class:`LeanBlock` computes the same block from the same weights in the ``(N, L, D)`` layout: one
  in-projection matmul, ``scaled_dot_product_attention`` (the kernel MHA itself calls), no copies;
* the last block for the class token only: a ViT that pools its class token never reads the other tokens'
  outputs of its last block, so their queries, attention output and MLP (~7% of ViT-B/32) are skipped;
* the patch embedding (a conv whose stride equals its kernel) as reshape + matmul on CPU: the conv's input
  gradient costs several times the equivalent matmul there.

:func:`input_grad_mode` applies them for the duration of a ``with`` block and restores the model exactly
afterwards, so a caller's model is never left modified. The maths is unchanged (the tests compare features
and input gradients with the plain model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LeanBlock", "PatchEmbedMatmul", "input_grad_mode", "optimizer_mode"]


class PatchEmbedMatmul(nn.Module):
    """A drop-in for a bias-free ``Conv2d(kernel=stride=p, padding=0)`` computed as a matmul over patches."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    @property
    def weight(self) -> nn.Parameter:  # ``model.dtype`` reads ``visual.conv1.weight``
        return self.conv.weight

    @staticmethod
    def supports(conv: nn.Module | None) -> bool:
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


class LeanBlock(nn.Module):
    """open_clip's ``ResidualAttentionBlock`` (pre-norm, ``nn.MultiheadAttention``) recomputed from its own
    weights in the batch-first layout, optionally for the class token (index 0) only.

    With ``class_token_only`` the keys and values still come from every token, so the class token's output
    is the full block's; the returned sequence has length 1. Use it only where nothing reads other tokens.
    """

    def __init__(self, block: nn.Module, class_token_only: bool = False) -> None:
        super().__init__()
        self.block, self.class_token_only = block, class_token_only

    @staticmethod
    def supports(block: nn.Module) -> bool:
        attn = getattr(block, "attn", None)
        return (isinstance(attn, nn.MultiheadAttention) and attn.batch_first and attn._qkv_same_embed_dim
                and attn.bias_k is None and not attn.add_zero_attn and not hasattr(block, "ln_1_kv")
                and all(hasattr(block, name) for name in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2")))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b = self.block
        if attn_mask is not None:  # MHA's mask conventions differ from SDPA's; vision towers pass none
            out = b(x, attn_mask=attn_mask)
            return out[:, :1] if self.class_token_only else out
        attn = b.attn
        n, length, width = x.shape
        heads = attn.num_heads
        qkv = F.linear(b.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)  # (N, H, L, d)
        if self.class_token_only:
            q, x = q[:, :, :1], x[:, :1]
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, q.shape[2], width)
        x = x + b.ls_1(F.linear(attended, attn.out_proj.weight, attn.out_proj.bias))
        return x + b.ls_2(b.mlp(b.ln_2(x)))


def _lean_transformer(visual: nn.Module) -> nn.ModuleList | None:
    """The vision tower's block list, if it is a batch-first open_clip ``Transformer`` of standard blocks."""
    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if not isinstance(blocks, nn.ModuleList) or not getattr(transformer, "batch_first", False):
        return None
    return blocks if len(blocks) and all(LeanBlock.supports(block) for block in blocks) else None


def _pools_class_token(visual: nn.Module) -> bool:
    """True where only the class token of the last block reaches the output (open_clip ``pool_type='tok'``)."""
    return (getattr(visual, "pool_type", None) == "tok" and getattr(visual, "attn_pool", None) is None
            and not getattr(visual, "output_tokens", False) and not getattr(visual, "final_ln_after_pool", False))


@contextlib.contextmanager
def input_grad_mode(model: nn.Module, *, freeze: bool = True, lean_blocks: bool = True,
                    class_token_only: bool = True, patch_matmul: bool | None = None) -> Iterator[nn.Module]:
    """Prepare ``model`` (a CLIP) for image-gradient work; everything is restored on exit.

    ``patch_matmul=None`` uses the matmul patch embedding on CPU only (on GPU the conv is already fast).
    Inside the block the model is in eval mode and, with ``class_token_only``, only pooled image features
    are valid. Parts a model lacks (other towers, custom blocks) are simply left as they are.
    """
    visual = getattr(model, "visual", model)
    saved_grad = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    blocks = _lean_transformer(visual) if lean_blocks else None
    originals = list(blocks) if blocks is not None else []
    conv = getattr(visual, "conv1", None)
    if patch_matmul is None:
        patch_matmul = next(visual.parameters()).device.type == "cpu"
    swap_conv = patch_matmul and PatchEmbedMatmul.supports(conv)
    cls_only = class_token_only and _pools_class_token(visual)
    was_training = model.training
    try:
        model.eval()
        for p, _ in saved_grad:
            p.requires_grad_(False)
        for i, block in enumerate(originals):
            blocks[i] = LeanBlock(block, class_token_only=cls_only and i == len(originals) - 1)
        if swap_conv:
            visual.conv1 = PatchEmbedMatmul(conv)
        yield model
    finally:
        if swap_conv:
            visual.conv1 = conv
        for i, block in enumerate(originals):
            blocks[i] = block
        for p, flag in saved_grad:
            p.requires_grad_(flag)
        model.train(was_training)


def optimizer_mode(model: nn.Module, fast: bool = True) -> contextlib.AbstractContextManager[nn.Module]:
    """How every optimiser (generation and the adapters) runs CLIP: weights frozen, and with ``fast`` every exact
    fast path; ``fast=False`` applies none, for bit-for-bit comparisons with upstream's code."""
    return input_grad_mode(model, freeze=True, lean_blocks=fast, class_token_only=fast,
                           patch_matmul=None if fast else False)
