"""Export a robust CLIP to transformers and use it there: zero-shot labels from CLIPModel/CLIPProcessor, side by side
with clipag on the same image, and the gradient a CLIP-guided generator would follow.

    python examples/hf_export_and_use.py photo.jpg --labels cat dog "red car"          # CLIPAG (ViT-B/32)
    python examples/hf_export_and_use.py photo.jpg --model FARE2-ViT-L/14 --out fare2-transformers

The export is the folder `clipag export MODEL OUT` writes; an existing one is reused.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

import clipag
from clipag.hf.export import export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--labels", nargs="+", default=["cat", "dog", "car", "landscape"])
    parser.add_argument("--model", default="ViT-B/32", help="anything clipag.load takes (default: CLIPAG)")
    parser.add_argument("--out", default=None, help="the transformers folder (default: ./<model>-transformers)")
    args = parser.parse_args()
    out = Path(args.out or re.sub(r"[^A-Za-z0-9._-]+", "-", Path(args.model).name) + "-transformers")
    if not (out / "config.json").is_file():
        export(args.model, out, "transformers")

    model, processor = CLIPModel.from_pretrained(out).eval(), CLIPProcessor.from_pretrained(out)
    prompts = [f"a photo of a {label}" for label in args.labels]
    image = Image.open(args.image).convert("RGB")
    inputs = processor(text=prompts, images=image, return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = model(**inputs).logits_per_image.softmax(dim=-1)[0]
    reference, preprocess = clipag.load(args.model, device="cpu")
    with torch.no_grad():
        ours = reference(preprocess(image).unsqueeze(0), clipag.tokenize(prompts))[0].softmax(dim=-1)[0]

    print("label\ttransformers\tclipag")
    for label, a, b in zip(args.labels, theirs.tolist(), ours.tolist(), strict=True):
        print(f"{label}\t{a:.4f}\t{b:.4f}")
    print(f"max |difference|: {(theirs - ours).abs().max():.1e}")

    # What CLIP guidance follows: the gradient of the image-text similarity with respect to the pixels.
    pixels = inputs["pixel_values"].clone().requires_grad_(True)
    image_features = model.get_image_features(pixel_values=pixels)
    if not isinstance(image_features, torch.Tensor):  # transformers 5 returns an output object
        image_features = image_features.pooler_output
    with torch.no_grad():
        text_features = model.get_text_features(input_ids=inputs["input_ids"][:1],
                                                attention_mask=inputs["attention_mask"][:1])
        if not isinstance(text_features, torch.Tensor):
            text_features = text_features.pooler_output
    torch.nn.functional.cosine_similarity(image_features, text_features).sum().backward()
    print(f"gradient norm towards {prompts[0]!r}: {pixels.grad.norm():.3e}")


if __name__ == "__main__":
    main()
