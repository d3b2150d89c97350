"""CLIP and a robust CLIP under the same PGD attack: zero-shot accuracy side by side.

    python examples/attack_clip_vs_robust.py imagenet-val-sample/                  # L-inf 1/255, 2/255, 4/255
    python examples/attack_clip_vs_robust.py my-classes/ --norm l2 --epsilon 0.5 1 --model FARE2-ViT-L/14 \\
        --baseline hf-hub:timm/vit_large_patch14_clip_224.openai

DATA is a folder of class sub-folders (class names: the folder names, or DATA/classnames.txt). Both models
see the same images, prompts and attack: ``clipag.attacks.pgd``, the PGD that ``clipag.finetune`` trains
against and ``python -m clipag.eval`` reports, with the same seeded random start. The attack works in [0, 1]
pixel space, so the model's preprocess is split: resize/crop/to-tensor first, normalize inside the attack.
"""

import argparse
from fractions import Fraction

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import Compose

import clipag as clip
from clipag.attacks import pgd
from clipag.datasets import read_image_folder


def attacked_accuracy(name, samples, classnames, template, norm, epsilons, steps, seed, batch_size, device):
    """Zero-shot accuracy of model ``name``, clean (ε=0) and under PGD at each ε."""
    model, preprocess = clip.load(name, device, precision="fp32")
    model.eval().requires_grad_(False)
    to_pixels, normalize = Compose(preprocess.transforms[:-1]), preprocess.transforms[-1]
    with torch.no_grad():
        prompts = clip.tokenize([template.format(c) for c in classnames], context_length=model.context_length)
        text = model.encode_text(prompts.to(device))
        text = F.normalize(text.float(), dim=-1)
    scale = model.logit_scale.exp().float()

    def logits(pixels):
        return scale * F.normalize(model.encode_image(normalize(pixels)).float(), dim=-1) @ text.T

    generator = torch.Generator(device).manual_seed(seed)  # both models get the same random starts
    correct = dict.fromkeys([0.0, *epsilons], 0)
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        pixels = torch.stack([to_pixels(Image.open(path)) for path, _ in batch]).to(device)
        labels = torch.tensor([label for _, label in batch], device=device)
        for eps in correct:
            adversarial = pgd(lambda x, y=labels: F.cross_entropy(logits(x), y, reduction="sum"), pixels, norm=norm,
                              epsilon=eps, steps=steps, generator=generator)
            with torch.no_grad():
                correct[eps] += int((logits(adversarial).argmax(-1) == labels).sum())
    return {eps: n / len(samples) for eps, n in correct.items()}


def budget(eps):
    """``0.5`` and ``2`` as they are, ``4/255`` rather than ``0.0156863``."""
    short, in_255ths = f"{eps:g}", round(eps * 255)
    return f"{in_255ths}/255" if len(short) > 4 and abs(eps * 255 - in_255ths) < 1e-6 else short


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="image folder: DATA/<class>/<images>")
    parser.add_argument("--model", default="ViT-B/32", help="the robust model (default: CLIPAG)")
    parser.add_argument("--baseline", default="hf-hub:timm/vit_base_patch32_clip_224.openai",
                        help="the standard CLIP to compare with (default: OpenAI's ViT-B/32)")
    parser.add_argument("--norm", choices=("linf", "l2"), default="linf")
    parser.add_argument("--epsilon", nargs="+", type=lambda s: float(Fraction(s)),
                        default=[1 / 255, 2 / 255, 4 / 255], help="budgets in [0, 1] pixel units, e.g. 4/255")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--template", default="a photo of a {}.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    samples, classnames = read_image_folder(args.data)
    results = {name: attacked_accuracy(name, samples, classnames, args.template, args.norm, args.epsilon, args.steps,
                                       args.seed, args.batch_size, device)
               for name in (args.baseline, args.model)}

    columns = ["clean"] + [f"{args.norm} {budget(e)}" for e in args.epsilon]
    width = max(len(name) for name in results)
    print(f"{len(samples)} images, {len(classnames)} classes, {args.steps}-step PGD")
    print(f"{'model':<{width}}  " + "  ".join(f"{c:>10}" for c in columns))
    for name, accuracy in results.items():
        print(f"{name:<{width}}  " + "  ".join(f"{a:>10.1%}" for a in accuracy.values()))


if __name__ == "__main__":
    main()
