"""The model card (``README.md``) of an export: source, source sha256, licence as published, what was measured, how
it was made. Metadata goes through huggingface_hub's ``ModelCardData`` so the Hub reads it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..hub import model_dir, read_json, sha256_of
from ..registry import ModelEntry, get_entry

__all__ = ["source_record", "write_card", "HUB_LICENSES"]

_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                 "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
HUB_LICENSES = {"MIT": "mit", "CC-BY-4.0": "cc-by-4.0", "Apache-2.0": "apache-2.0"}


def source_record(name: str, source: str, download_root: str | os.PathLike | None) -> dict[str, Any]:
    """Where the weights came from and the sha256 of the file(s) they were read from."""
    entry = get_entry(name)
    if entry is not None and not entry.hf_repo:
        recorded = read_json(model_dir(entry.name, download_root) / "source.json")
        note = "pinned by clipag" if entry.sha256 else "recorded at first download (the source publishes none)"
        return {"source": entry.source, "files": [{"name": entry.filename or "", "sha256": recorded.get("sha256"),
                                                  "size": recorded.get("size")}], "note": note}
    repo = entry.hf_repo if entry is not None else (name.removeprefix("hf-hub:") if name.startswith("hf-hub:")
                                                    else None)
    if repo is not None:
        from huggingface_hub import try_to_load_from_cache

        paths = [p for p in (try_to_load_from_cache(repo, f) for f in _WEIGHT_FILES) if isinstance(p, str)]
        revision = Path(paths[0]).parent.name if paths else "unknown"
        return {"source": f"hf-hub:{repo} (revision {revision})", "files": [_file(Path(p)) for p in paths[:1]],
                "note": "computed from the downloaded file"}
    path = Path(name).expanduser()
    files = [path] if path.is_file() else [path / f for f in _WEIGHT_FILES if (path / f).is_file()][:1]
    return {"source": str(path.resolve()), "files": [_file(f) for f in files], "note": "computed from the file"}


def _file(path: Path) -> dict[str, Any]:
    return {"name": path.name, "sha256": sha256_of(path), "size": path.stat().st_size}


def _architecture(config: dict[str, Any]) -> str:
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    return (f"ViT image tower ({vision.get('layers')} layers, width {vision.get('width')}, patch "
            f"{vision.get('patch_size')}, {vision.get('image_size')} px), text tower ({text.get('layers')} layers, "
            f"width {text.get('width')}, context {text.get('context_length', 77)}), embedding {config.get('embed_dim')}"
            f", {'QuickGELU' if config.get('quick_gelu') else 'GELU'}")


def _licence(entry: ModelEntry | None) -> tuple[str, str]:
    """``(Hub metadata id, text as published)``."""
    if entry is None or not entry.license:
        return "unknown", "unknown: not a clipag registry model; check the terms of the source below"
    hub = next((v for k, v in HUB_LICENSES.items() if entry.license.upper().startswith(k.upper())), "unknown")
    return hub, entry.license


def _measured_lines(fmt: str, measured: dict[str, Any]) -> list[str]:
    if fmt == "open_clip":
        m = measured["open_clip"]
        return [f"- open_clip's own reader (`create_model_and_transforms('local-dir:…')`) on this folder vs clipag: "
                f"image features max |Δ| = {m['image_max_abs']:.1e}, text features max |Δ| = {m['text_max_abs']:.1e}, "
                f"preprocess max |Δ| = {m['preprocess_max_abs']:.1e} (fp32, CPU)."]
    f, lines = measured["features"], []
    lines.append(f"- `get_image_features` vs clipag's `encode_image`: max |Δ| = {f['image_max_abs']:.1e} on "
                 f"{f['images']} random inputs; `get_text_features` vs `encode_text`: max |Δ| = "
                 f"{f['text_max_abs']:.1e} on {f['texts']} texts (fp32, CPU).")
    for name, differing in measured["tokenizers"].items():
        same = measured["texts"] - len(differing)
        detail = "; differs on " + ", ".join(repr(t) for t in differing) if differing else ""
        lines.append(f"- `{name}` ids (padded to the context length) equal `clipag.tokenize` on {same} of "
                     f"{measured['texts']} awkward strings{detail}. OpenAI cleans text with ftfy and "
                     "`html.unescape`, which transformers' tokenizers do not (fully) do.")
    for name, p in measured["processors"].items():
        lines.append(f"- `{name}` `pixel_values` vs clipag's preprocess on 6 synthetic photos of different sizes: "
                     f"max |Δ| = {p['max_abs']:.2g}, mean |Δ| = {p['mean_abs']:.2g}, 99th percentile "
                     f"{p['p99_abs']:.2g} (normalised units, i.e. divided by the std; 0.015 is about one 8-bit grey "
                     "level).")
    versions = ", ".join(f"{k} {v}" for k, v in measured["versions"].items())
    lines.append(f"- Measured with {versions}.")
    return lines


def write_card(folder: Path, fmt: str, name: str, record: dict[str, Any], entry: ModelEntry | None,
               config: dict[str, Any], measured: dict[str, Any]) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    hub_licence, licence_text = _licence(entry)
    data = ModelCardData(license=hub_licence, library_name="transformers" if fmt == "transformers" else "open_clip",
                         pipeline_tag="zero-shot-image-classification",
                         tags=["clip", "clipag", "adversarial-robustness"])
    files = "; ".join(f"`{f['name']}` sha256 `{f['sha256']}` ({f['size']:,} bytes)" if f.get("size") else
                      f"`{f['name']}` sha256 `{f['sha256']}`" for f in record["files"]) or "no file recorded"
    load = ("```python\nfrom transformers import CLIPModel, CLIPProcessor\n"
            "model = CLIPModel.from_pretrained(\"THIS_REPO_OR_FOLDER\")\n"
            "processor = CLIPProcessor.from_pretrained(\"THIS_REPO_OR_FOLDER\")\n```"
            if fmt == "transformers" else
            "```python\nimport open_clip\nmodel, _, preprocess = open_clip.create_model_and_transforms("
            "\"hf-hub:THIS_REPO\")\n```")
    body = [
        f"# {name}: a {'transformers' if fmt == 'transformers' else 'open_clip'} export by clipag", "",
        entry.description if entry is not None else f"A CLIP model read by `clipag.load({name!r})`.", "",
        "| | |", "|---|---|",
        f"| source | {record['source']} |",
        f"| source sha256 | {files} ({record['note']}) |",
        f"| licence as published | {licence_text} |",
        f"| architecture | {_architecture(config)} |",
        *([f"| embedding space | {entry.embedding_space} |", f"| threat model | {entry.threat_model} |"]
          if entry is not None else []), "",
        "## Load it", "", load, "",
        "`clipag.load(\"hf-hub:THIS_REPO\")` (or the folder) reads it back exactly.", "",
        "## Equivalence, measured when this folder was written", "", *_measured_lines(fmt, measured), "",
        "## How it was made", "",
        f"`clipag export {name} OUT --format {fmt}` (clipag {__version__}). The weights were re-laid out key by key "
        + ("(q/k/v split out of the fused attention projection, projection matrices transposed), with no numerical "
           "change, and written by transformers' own `save_pretrained`. The tokenizer files hold the same BPE "
           "vocabulary and merges as OpenAI's `clip` (padding with id 0, as `clip.tokenize` does); "
           "`preprocessor_config.json` holds the model's own mean/std, resize and crop."
           if fmt == "transformers" else "and written in open_clip's `hf-hub:` layout, unchanged."),
    ]
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n").save(folder / "README.md")
