"""Zero-shot classification of an image folder: an OpenAI CLIP script switched to CLIPAG by one import.

    python examples/zero_shot_folder.py photos/ --labels cat dog "red car"
    python examples/zero_shot_folder.py dataset/                # class sub-folders: their names are the labels

Everything below the import is the usual OpenAI ``clip`` pipeline (load, tokenize, encode, cosine
similarity, softmax); with ``import clip`` instead it runs unchanged on OpenAI's package. With class
sub-folders named as the labels it also prints the accuracy.
"""

import argparse
from pathlib import Path

import torch
from PIL import Image

import clipag as clip  # was: import clip

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="images, directly or in class sub-folders")
    parser.add_argument("--labels", nargs="+", help="class names (default: the names of the sub-folders)")
    parser.add_argument("--model", default="ViT-B/32", help="anything clip.load takes (default: CLIPAG)")
    parser.add_argument("--template", default="a photo of a {}.", help="prompt for each label")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
    labels = args.labels or sorted(d.name for d in args.folder.iterdir() if d.is_dir())
    if not paths or not labels:
        parser.error(f"{args.folder}: needs image files and --labels or class sub-folders")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, preprocess = clip.load(args.model, device=device)
    text = clip.tokenize([args.template.format(label) for label in labels]).to(device)

    correct = scored = 0
    with torch.no_grad():
        text_features = model.encode_text(text)
        text_features /= text_features.norm(dim=-1, keepdim=True)
        for start in range(0, len(paths), args.batch_size):
            batch = paths[start:start + args.batch_size]
            images = torch.stack([preprocess(Image.open(path)) for path in batch]).to(device)
            image_features = model.encode_image(images)
            image_features /= image_features.norm(dim=-1, keepdim=True)
            probs = (100.0 * image_features @ text_features.T).softmax(dim=-1)
            for path, p in zip(batch, probs.cpu(), strict=True):
                best = int(p.argmax())
                print(f"{path.relative_to(args.folder)}\t{labels[best]}\t{p[best]:.4f}")
                truth = path.relative_to(args.folder).parts[0] if path.parent != args.folder else None
                if truth in labels:
                    scored += 1
                    correct += truth == labels[best]
    if scored:
        print(f"accuracy: {correct}/{scored} = {correct / scored:.1%}")


if __name__ == "__main__":
    main()
