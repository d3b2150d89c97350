"""The equivalence figures docs/huggingface.md quotes, measured with the installed transformers.

Exports random-weight ViT-B/32 models (GELU, as CLIPAG, and QuickGELU, as OpenAI-initialised ones) with
`clipag export`'s own code, reloads them with transformers, and prints:

- max |get_image_features - encode_image| and max |get_text_features - encode_text| (fp32, CPU);
- for each transformers CLIP tokenizer, the awkward strings whose padded ids differ from clipag.tokenize, with
  both tokenizations;
- for each transformers CLIP image processor, its pixel_values against clipag's preprocess, per photo size.

    python benchmarks/hf_equivalence.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from clipag.hf import measure
from clipag.hf.export import export


def random_vit_b_32(folder: Path, quick_gelu: bool) -> Path:
    config = open_clip.get_model_config("ViT-B-32")
    config["quick_gelu"] = quick_gelu
    torch.manual_seed(0)
    model = open_clip.CLIP(**config)
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def _text(tokenizer, token_id: int) -> str:
    """A BPE token as text (its bytes decoded; a piece of a multi-byte character shows as its byte escapes)."""
    piece = tokenizer.decoder[token_id]
    if piece.startswith("<|"):
        return piece
    raw = bytes(tokenizer.byte_decoder[c] for c in piece.removesuffix("</w>"))
    return raw.decode("utf-8", errors="backslashreplace") + ("</w>" if piece.endswith("</w>") else "")


def main() -> None:
    import transformers

    import clipag

    print(f"transformers {transformers.__version__}, torch {torch.__version__.split('+')[0]}\n")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for quick_gelu in (False, True):
            source = random_vit_b_32(root / f"src-{quick_gelu}", quick_gelu)
            result = export(str(source), root / f"out-{quick_gelu}", download_root=str(root / "cache"),
                            log=lambda message: None)
            f = result.measured["features"]
            print(f"ViT-B/32 {'QuickGELU' if quick_gelu else 'GELU'}: image max |diff| {f['image_max_abs']:.1e}, "
                  f"text max |diff| {f['text_max_abs']:.1e} ({f['images']} images, {f['texts']} texts)")
        out = root / "out-False"
        tokenizer = clipag.tokenizer.get_tokenizer()
        print(f"\ntokenizers on {len(measure.AWKWARD_TEXTS)} awkward strings (ids padded to 77):")
        for name in measure.tokenizer_classes():
            hf_tokenizer = getattr(transformers, name).from_pretrained(out)
            differences = measure.tokenizer_differences(hf_tokenizer)
            print(f"  {name}: {len(measure.AWKWARD_TEXTS) - len(differences)} equal, {len(differences)} differ")
            for text, (theirs, ours) in differences.items():
                pieces = [[_text(tokenizer, i) for i in ids if i] for ids in (theirs, ours)]
                print(f"    {text!r}\n      transformers {pieces[0]}\n      clipag       {pieces[1]}")
        _, preprocess = clipag.load(str(root / "src-False"), device="cpu", download_root=str(root / "cache"))
        print("\nimage processors, pixel_values vs clipag's preprocess (normalised units):")
        for name in measure.image_processor_classes():
            processor = getattr(transformers, name).from_pretrained(out)
            for i, (w, h) in enumerate(measure.PHOTO_SIZES):
                d = measure.processor_difference(processor, preprocess, [measure.synthetic_photo(w, h, seed=i)])
                print(f"  {name:24s} {w:4d}x{h:<4d} max {d['max_abs']:.4f}  mean {d['mean_abs']:.2e}")


if __name__ == "__main__":
    main()
