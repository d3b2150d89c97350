"""Finetune a CLIP adversarially, then load the export with ``clipag.load`` like any other model.

    python examples/finetune_then_load.py                          # a few minutes on a CPU, nothing downloaded
    python examples/finetune_then_load.py --model runs/x/export    # finetune these weights instead

Without ``--model``, the bundled 32 px architecture ``clipag-tiny-32px`` is first pretrained from scratch on
the synthetic source (ε = 0, text tower trained): adversarial finetuning needs a model that already knows its
classes. Then its image tower is finetuned against L2 PGD with the text tower frozen (CLIPAG's recipe), the run
exports ``open_clip_config.json`` + ``open_clip_model.safetensors``, and ``clipag.load`` reads that folder back.
The settings are the README's CPU walkthrough; docs/finetune.md has real data, real models and many GPUs.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import clipag
from clipag.eval import eval_batches
from clipag.finetune import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="weights to finetune, anything clipag.load takes "
                                                      "(default: pretrain clipag-tiny-32px from scratch first)")
    parser.add_argument("--steps", type=int, default=300, help="adversarial finetuning steps")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="clean pretraining steps (without --model)")
    parser.add_argument("--epsilon", type=float, default=1.0, help="L2 budget, pixels in [0, 1]")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=500, help="held-out synthetic images to evaluate on")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest for 32 px models)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/finetune-then-load"))
    parser.add_argument("--overwrite", action="store_true", help="run again into a used --output-dir (the earlier "
                                                                  "runs move to its replaced/ folders)")
    args = parser.parse_args()

    common = ["--batch-size", str(args.batch_size), "--warmup", "10", "--workers", "0", "--threads", str(args.threads),
              "--eval-data", "synthetic", "--eval-samples", str(args.eval_samples), "--no-progress",
              *(["--overwrite"] if args.overwrite else [])]
    start = args.model
    if start is None:
        pretrained = train(["--model", "clipag-tiny-32px", "--unlock-text", "--epsilon", "0", "--lr", "2e-3",
                            "--steps", str(args.pretrain_steps), "--output-dir", str(args.output_dir / "pretrain"),
                            *common])
        start = str(pretrained.export_dir)
    result = train(["--pretrained", start, "--epsilon", str(args.epsilon), "--attack-steps", "3", "--lr", "1e-3",
                    "--steps", str(args.steps), "--output-dir", str(args.output_dir / "robust"), *common])
    robust = next(v for k, v in result.eval.items() if k.startswith("eval/robust_acc"))
    print(f"finetuned {start} → {result.export_dir}; evaluated in training: clean {result.eval['eval/clean_acc']:.1%}, "
          f"under L2 PGD ε={args.epsilon:g} {robust:.1%}")

    # The export is an ordinary model folder now: load it as OpenAI's clip.load would, and classify.
    model, preprocess = clipag.load(str(result.export_dir), device="cpu")
    normalize = preprocess.transforms[-1]  # eval_batches already resizes, crops and converts to tensors
    batches, classnames, total = eval_batches("synthetic", model.visual.input_resolution, 256, args.eval_samples)
    prompts = clipag.tokenize([f"a photo of a {name}." for name in classnames], context_length=model.context_length)
    correct = 0
    with torch.no_grad():
        text = F.normalize(model.encode_text(prompts), dim=-1)
        for pixels, labels, _ in batches:
            image = F.normalize(model.encode_image(normalize(pixels)), dim=-1)
            correct += int(((image @ text.T).argmax(-1) == labels).sum())
    print(f"clipag.load({str(result.export_dir)!r}): zero-shot accuracy {correct / total:.1%} on {total} "
          "held-out synthetic images")


if __name__ == "__main__":
    main()
