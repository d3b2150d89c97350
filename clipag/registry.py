"""The model registry: every name ``clipag.load`` knows, with its architecture, activation and source.

Each entry states its activation explicitly. open_clip's ``ViT-B-32`` config uses GELU while OpenAI
weights need QuickGELU, and nothing fails when they are mixed: outputs are just silently ~1e-2 off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelEntry", "REGISTRY", "OPENAI_NAMES_WITHOUT_COUNTERPART", "OPENAI_HUB_IDS", "available_models",
           "get_entry", "not_found_error"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    arch: str  # an open_clip architecture name
    quick_gelu: bool
    description: str
    hf_repo: str | None = None  # open_clip `hf-hub:` layout
    url: str | None = None  # a direct download (converted to safetensors once)
    filename: str | None = None
    size: int | None = None  # bytes, pinned
    sha256: str | None = None  # pinned where published; otherwise recorded on first download
    preprocess: dict[str, Any] = field(default_factory=lambda: {"mean": OPENAI_MEAN, "std": OPENAI_STD,
                                                                "interpolation": "bicubic",
                                                                "resize_mode": "shortest"})
    embedding_space: str = ""  # whose text/image space this lives in, for honest name mappings
    layout: str = "open_clip"  # of hf_repo: open_clip's `hf-hub:` files, or "transformers" (config.json + model.*)
    license: str = ""  # as published by the source, and where it was read
    threat_model: str = ""  # which tower is robust, against what attack

    @property
    def source(self) -> str:
        return f"hf-hub:{self.hf_repo}" if self.hf_repo else str(self.url)

    def model_config(self) -> dict[str, Any]:
        """The open_clip model config with the activation pinned by this entry."""
        import open_clip

        config = open_clip.get_model_config(self.arch)
        if config is None:
            raise RuntimeError(f"open_clip has no architecture {self.arch!r}")
        config["quick_gelu"] = self.quick_gelu
        return config


_ZENODO_CLIPAG = "https://zenodo.org/records/10446026/files/CLIPAG_ViTB32.pt?download=1"


_MIT_CARD = "MIT (Hub model card)"
_MIT_UNCHECKED = "not checked on this repo's card (chs20's other robust CLIPs are MIT)"


def _robust(name: str, repo: str, arch: str, quick_gelu: bool, what: str, space: str, license: str,
            threat: str, layout: str = "open_clip") -> ModelEntry:
    return ModelEntry(name=name, arch=arch, quick_gelu=quick_gelu, hf_repo=repo, description=what,
                      embedding_space=space, license=license, threat_model=threat, layout=layout)


def _linf(method: str, eps: int, data: str | None = None) -> str:
    return (f"image tower: {method}, L-inf eps={eps}/255{f', on {data}' if data else ''}; text tower: the "
            "original's, not adversarially trained")


_ENTRIES = [
    ModelEntry(
        name="ViT-B/32", arch="ViT-B-32", quick_gelu=False, url=_ZENODO_CLIPAG, filename="CLIPAG_ViTB32.pt",
        size=1_310_567_621,
        description="CLIPAG (Ganz & Elad, WACV 2024): adversarially finetuned image tower, perceptually "
                    "aligned gradients. open_clip ViT-B-32, GELU, as the official loader builds it.",
        embedding_space="CLIPAG's own (finetuned from OpenAI ViT-B/32; text tower frozen)",
        license="not stated where checked (Zenodo 10446026's licence field was not readable here; "
                "royg27/CLIPAG has no licence file)",
        threat_model="image tower adversarially finetuned (the attack norm and budget of this checkpoint are not "
                     "published with it); text tower frozen",
    ),
    _robust("ViT-L/14", "chs20/fare2-clip", "ViT-L-14", True,
            "Alias of FARE2-ViT-L/14: OpenAI's ViT-L/14 has no CLIPAG counterpart; FARE2 was initialised "
            "from it, so it keeps OpenAI's embedding space.", "OpenAI ViT-L/14", _MIT_CARD,
            _linf("FARE", 2, "ImageNet")),
    _robust("FARE2-ViT-L/14", "chs20/fare2-clip", "ViT-L-14", True,
            "FARE (Schlarmann et al. 2024), unsupervised robust finetuning, Linf eps=2/255, OpenAI init.",
            "OpenAI ViT-L/14", _MIT_CARD, _linf("FARE", 2, "ImageNet")),
    _robust("FARE4-ViT-L/14", "chs20/fare4-clip", "ViT-L-14", True,
            "FARE, Linf eps=4/255, OpenAI init.", "OpenAI ViT-L/14", _MIT_CARD, _linf("FARE", 4, "ImageNet")),
    _robust("TeCoA2-ViT-L/14", "chs20/tecoa2-clip", "ViT-L-14", True,
            "TeCoA (Mao et al. 2023), supervised adversarial finetuning on ImageNet, Linf eps=2/255, OpenAI init.",
            "OpenAI ViT-L/14", _MIT_UNCHECKED, _linf("TeCoA", 2, "ImageNet")),
    _robust("TeCoA4-ViT-L/14", "chs20/tecoa4-clip", "ViT-L-14", True,
            "TeCoA, Linf eps=4/255, OpenAI init.", "OpenAI ViT-L/14", _MIT_CARD, _linf("TeCoA", 4, "ImageNet")),
    _robust("FARE4-ViT-B/32-laion", "chs20/FARE4-ViT-B-32-laion2B-s34B-b79K", "ViT-B-32", False,
            "FARE, Linf eps=4/255, from LAION-2B ViT-B-32 (not OpenAI's embedding space).", "LAION-2B ViT-B-32",
            _MIT_UNCHECKED, _linf("FARE", 4)),
    _robust("TeCoA4-ViT-B/32-laion", "chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K", "ViT-B-32", False,
            "TeCoA, Linf eps=4/255, from LAION-2B ViT-B-32.", "LAION-2B ViT-B-32", _MIT_CARD, _linf("TeCoA", 4)),
    _robust("FARE4-ViT-B/16-laion", "chs20/FARE4-ViT-B-16-laion2B-s34B-b88K", "ViT-B-16", False,
            "FARE, Linf eps=4/255, from LAION-2B ViT-B-16.", "LAION-2B ViT-B-16", _MIT_CARD, _linf("FARE", 4)),
    _robust("TeCoA4-ViT-B/16-laion", "chs20/TeCoA4-ViT-B-16-laion2B-s34B-b88K", "ViT-B-16", False,
            "TeCoA, Linf eps=4/255, from LAION-2B ViT-B-16.", "LAION-2B ViT-B-16", _MIT_CARD, _linf("TeCoA", 4)),
    # LEAF (Abad Rocamora et al., NeurIPS 2025) publishes transformers CLIPModels. Its card: "Model Initialized from
    # openai/clip-vit-large-patch14. The image encoder is finetuned with FARE at eps=2/255"; config.json sets no
    # hidden_act, so transformers' default (quick_gelu) applies, as OpenAI's weights need.
    _robust("LEAF-FARE2-ViT-L/14", "LEAF-CLIP/CLIP-ViT-L-FARE2", "ViT-L-14", True,
            "LEAF's FARE2 ViT-L/14 (Abad Rocamora et al., NeurIPS 2025), a transformers CLIPModel: image tower "
            "FARE-finetuned at Linf eps=2/255, OpenAI init (datasets on its card: ImageNet-1k, DataComp-small). "
            "LEAF's robust-text models are CLIPModels too: load them by hf-hub: id.", "OpenAI ViT-L/14", _MIT_CARD,
            _linf("FARE", 2), layout="transformers"),
]
REGISTRY: dict[str, ModelEntry] = {entry.name: entry for entry in _ENTRIES}
_ALIASES = {"CLIPAG-ViT-B/32": "ViT-B/32", "CLIPAG": "ViT-B/32"}

# OpenAI names that clipag deliberately does not map: no robust model shares their embedding space, and a
# silent swap to another space (e.g. LAION ViT-B/16) would break code that mixes them with OpenAI features.
OPENAI_NAMES_WITHOUT_COUNTERPART = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/16",
                                    "ViT-L/14@336px")


# OpenAI's transformers ports on the Hub, by the clip.load name of the same weights: `clipag run` maps a
# `from_pretrained("openai/...")` by the same rule as `clip.load(name)` (a registry name, or no counterpart).
OPENAI_HUB_IDS = {"openai/clip-vit-base-patch32": "ViT-B/32", "openai/clip-vit-base-patch16": "ViT-B/16",
                  "openai/clip-vit-large-patch14": "ViT-L/14", "openai/clip-vit-large-patch14-336": "ViT-L/14@336px"}


def available_models() -> list[str]:
    """Names ``clipag.load`` accepts besides ``hf-hub:`` ids and file paths."""
    return list(REGISTRY)


def get_entry(name: str) -> ModelEntry | None:
    return REGISTRY.get(_ALIASES.get(name, name))


def not_found_error(name: str) -> RuntimeError:
    message = f"Model {name} not found; available models = {available_models()}"
    if name in OPENAI_NAMES_WITHOUT_COUNTERPART:
        message += (f". {name} is an OpenAI model with no robust counterpart in its embedding space; "
                    "load OpenAI's weights with the `clip` package, or pick a robust model above")
    return RuntimeError(message)
