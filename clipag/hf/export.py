"""``clipag export NAME OUT``: any model ``clipag.load`` takes, as a transformers ``CLIPModel`` folder or an open_clip
``hf-hub:`` folder, with a model card, optionally pushed to the Hub.

The transformers folder is written by transformers' own ``save_pretrained`` (model, tokenizer, image processor) and
then reloaded by transformers to measure it against clipag (:mod:`.measure`); an export that does not reproduce the
model within 1e-4 is deleted and refused. The card states the measured figures.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..images import check_output_folder
from ..model import attach_preprocess, build_model, load_weights, make_preprocess, skip_init
from ..registry import get_entry
from ..weights import ResolvedWeights, resolve
from .card import source_record, write_card
from .convert import PAD_ID, to_transformers_config, to_transformers_preprocess, to_transformers_state_dict

__all__ = ["FORMATS", "ExportError", "ExportResult", "export", "push_to_hub", "require_transformers",
           "save_transformers_model"]

FORMATS = ("transformers", "open_clip")
TOLERANCE = 1e-4  # fp32 CPU; measured differences are ~1e-6 (see docs/huggingface.md)


class ExportError(RuntimeError):
    """The export cannot be written or did not reproduce the model. The message says why."""


@dataclass
class ExportResult:
    folder: Path
    format: str
    measured: dict[str, Any]


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ExportError("--format transformers needs transformers: pip install 'clipag[hf]'") from e
    return transformers


def export(name: str, out: str | os.PathLike, fmt: str = "transformers", download_root: str | None = None,
           log: Callable[[str], None] | None = None) -> ExportResult:
    """Write ``name`` (anything ``clipag.load`` takes) to the new folder ``out`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    log = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder; choose a new folder (nothing was written)")
    try:  # before a model is fetched and converted
        check_output_folder(out, "OUT")
    except ValueError as e:
        raise ExportError(str(e)) from None
    if fmt == "transformers":
        require_transformers()
    resolved = resolve(name, download_root=download_root)
    model = build_model(resolved.config, precision="fp32", initialize=False)
    load_weights(model, resolved.state_dict, resolved.source)
    preprocess_cfg = attach_preprocess(model, resolved.preprocess)
    preprocess = make_preprocess(model.visual.input_resolution, resolved.preprocess)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        log(f"exporting {resolved.source} as {fmt} ...")
        writer = _write_transformers if fmt == "transformers" else _write_open_clip
        measured = writer(resolved, model, preprocess_cfg, preprocess, tmp)
        write_card(tmp, fmt, name, source_record(name, resolved.source, download_root), get_entry(name),
                   resolved.config, measured)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, fmt, measured)


def _write_transformers(resolved: ResolvedWeights, model: torch.nn.Module, preprocess_cfg: dict[str, Any],
                        preprocess: Any, folder: Path) -> dict[str, Any]:
    transformers = require_transformers()
    from .measure import measure_export

    save_transformers_model(resolved.config, model.state_dict(), folder)
    size = model.visual.input_resolution
    image_processor = transformers.CLIPImageProcessor(**to_transformers_preprocess(preprocess_cfg, size))
    transformers.CLIPProcessor(image_processor=image_processor,
                               tokenizer=_tokenizer(folder, model.context_length)).save_pretrained(folder)
    # transformers 5 nests the image processor in processor_config.json and saves tokenizer.json only; the
    # standalone files keep the folder readable by transformers 4 (and by anything reading the classic layout).
    image_processor.save_pretrained(folder)
    _share(folder)
    equivalence = measure_export(model, preprocess, folder)
    _check(resolved.source, "transformers", equivalence.features["image_max_abs"],
           equivalence.features["text_max_abs"])
    return {"features": equivalence.features, "tokenizers": equivalence.tokenizers,
            "processors": equivalence.processors, "versions": equivalence.versions, "texts": equivalence.texts}


def save_transformers_model(config: dict[str, Any], state_dict: dict[str, torch.Tensor], folder: Path) -> None:
    """``config.json`` + ``model.safetensors`` of the ``CLIPModel`` an open_clip config and state dict describe,
    written by transformers' ``save_pretrained`` after a strict load (every weight placed, none left over)."""
    transformers = require_transformers()
    hf_config = transformers.CLIPConfig(**to_transformers_config(config))
    # Import the model class before skip_init: transformers 4 keeps the torch.nn.init functions it finds when
    # modeling_utils is first imported, and would keep skip_init's no-ops for good if that happened inside it.
    model_class = transformers.CLIPModel
    with skip_init():  # every weight is loaded next, strictly
        hf_model = model_class(hf_config).eval()
    hf_model.load_state_dict(to_transformers_state_dict(state_dict), strict=True)
    hf_model.save_pretrained(folder)


def _tokenizer(folder: Path, context_length: int) -> Any:
    """A transformers CLIP tokenizer built from clipag's own BPE tables (the same vocabulary and merges), padding
    with id 0 as OpenAI's ``clip.tokenize`` does. transformers 4 gets the fast one (it also writes tokenizer.json)."""
    import transformers

    from ..tokenizer import EOT_TEXT, SOT_TEXT, get_tokenizer

    bpe = get_tokenizer()
    vocab = dict(sorted(bpe.encoder.items(), key=lambda kv: kv[1]))
    if list(vocab.values()) != list(range(len(vocab))):
        raise ExportError("clipag's BPE vocabulary is not contiguous; cannot write vocab.json")
    source = folder / ".bpe"
    source.mkdir()
    (source / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    (source / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    pad = bpe.decoder[PAD_ID]
    (source / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": SOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, "pad_token": pad,
        "model_max_length": context_length, "do_lower_case": True, "errors": "replace"}), encoding="utf-8")
    cls = transformers.CLIPTokenizerFast if hasattr(transformers, "CLIPTokenizerFast") else transformers.CLIPTokenizer
    try:
        tokenizer = cls.from_pretrained(source)
        for name in ("vocab.json", "merges.txt"):
            os.replace(source / name, folder / name)
    finally:
        shutil.rmtree(source)
    if tokenizer.pad_token_id != PAD_ID or tokenizer.eos_token_id != vocab[EOT_TEXT]:
        raise ExportError(f"the transformers tokenizer pads with {tokenizer.pad_token_id}, not {PAD_ID}")
    return tokenizer


def _share(folder: Path) -> None:
    """Files as readable as any the user writes (safetensors creates 0600 files), since exports are for sharing."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _write_open_clip(resolved: ResolvedWeights, model: torch.nn.Module, preprocess_cfg: dict[str, Any],
                     preprocess: Any, folder: Path) -> dict[str, Any]:
    """open_clip's ``hf-hub:`` layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``, written by the
    writer ``clipag.finetune`` exports with."""
    from ..finetune.export import export_model

    export_model(model, resolved.config, {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()
                                          if k in ("mean", "std", "interpolation", "resize_mode", "fill_color")},
                 folder)
    _share(folder)
    measured = _measure_open_clip(model, preprocess, folder)
    _check(resolved.source, "open_clip", measured["image_max_abs"], measured["text_max_abs"])
    return {"open_clip": measured}


def _check(source: str, fmt: str, *differences: float) -> None:
    for difference in differences:
        if not difference <= TOLERANCE:  # NaN fails too (max() of several would hide a NaN behind a number)
            raise ExportError(f"the {fmt} export of {source} differs from clipag's model by {difference:.2e} "
                              f"(> {TOLERANCE:g}); it was not written. This is a bug: please report it")


@torch.no_grad()
def _measure_open_clip(model: torch.nn.Module, preprocess: Any, folder: Path) -> dict[str, float]:
    """open_clip's own reader (``local-dir:``, the ``hf-hub:`` layout from disk) vs clipag: max |differences|."""
    import open_clip

    from ..tokenizer import tokenize
    from .measure import AWKWARD_TEXTS, synthetic_photo

    reference, _, reference_preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    reference.eval()
    size = model.visual.input_resolution
    pixels = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = tokenize(list(AWKWARD_TEXTS), context_length=model.context_length, truncate=True)
    photo = synthetic_photo(640, 480)
    return {"image_max_abs": float((model.encode_image(pixels) - reference.encode_image(pixels)).abs().max()),
            "text_max_abs": float((model.encode_text(ids) - reference.encode_text(ids)).abs().max()),
            "preprocess_max_abs": float((preprocess(photo) - reference_preprocess(photo)).abs().max())}


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload ``folder`` to the Hub model repo ``repo`` (created if missing) through huggingface_hub."""
    from ..finetune.export import push_to_hub as push

    return push(folder, repo, private=private, commit_message="clipag export")
