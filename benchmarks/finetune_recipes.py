"""Do the documented finetuning recipes learn beyond the synthetic source? Each recipe, over seeds, on real images.

The real images are scikit-learn's bundled handwritten digits (1,797 grayscale 8×8 scans, no download),
upscaled to 32 px and written as an image folder with one caption per class ("a photo of a three."), split
1,500 train / 297 held out. Each run is ``python -m clipag.finetune`` as a user types it; the score is the
held-out zero-shot accuracy from ``python -m clipag.eval``, plus the final training loss and whether the run's
collapse watch fired, and the accuracy under the README's attack (L2 ε = 0.5, 10-step PGD). Accuracy, not
time, is measured, so the machine's load does not matter. A run folder that already has an export is
evaluated again, not retrained.

    pip install scikit-learn
    python benchmarks/finetune_recipes.py --seeds 0 1 2                   # every recipe on digits and synthetic
    python benchmarks/finetune_recipes.py --recipes walkthrough --data digits --jobs 4
    python benchmarks/finetune_recipes.py --model old-tiny.json --recipes walkthrough     # another config
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BASE = "--model {model} --unlock-text --epsilon 0 --workers 0 --threads 1"
# name: (flags, what it is); "robust" finetunes the walkthrough's export, as the README's second step does
RECIPES = {
    "walkthrough": (f"{BASE} --steps 300 --batch-size 64 --lr 2e-3 --warmup 10", "README CPU walkthrough, step 1"),
    "defaults": (f"{BASE} --steps 300 --batch-size 64", "the walkthrough with the from-scratch LR/warmup defaults"),
    "reporter": (f"{BASE} --steps 400 --batch-size 128 --lr 2e-3 --warmup 80", "issue 13's run that learned"),
    "only-steps": (f"{BASE} --steps 400", "clean pretraining, all defaults (batch 128, LR, warmup) but --steps"),
    "no-flags": ("--model {model} --steps 400 --workers 0 --threads 1", "no flags but --steps: adversarial (ε 1.5) "
                 "against the frozen random text tower"),
    "robust": ("--epsilon 1 --attack-steps 3 --steps 300 --batch-size 64 --lr 1e-3 --warmup 10 --workers 0 "
               "--threads 1", "README walkthrough, step 2: adversarial finetuning of the walkthrough's export"),
}


def make_digits(root: Path) -> Path:
    """``root/{train,val}/<digit name>/<index>.png``, a fixed split; written once."""
    if (root / "val" / "nine").is_dir():
        return root
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    for split, indices in (("train", order[:1500]), ("val", order[1500:])):
        for i in indices:
            folder = root / split / DIGITS[digits.target[i]]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] / 16 * 255).astype(np.uint8)
            Image.fromarray(pixels, "L").resize((32, 32), Image.BICUBIC).save(folder / f"{i:04d}.png")
    return root


def run(recipe: str, data: str, seed: int, out: Path, digits: Path, model: str) -> dict:
    flags = RECIPES[recipe][0].format(model=model)
    run_dir = out / f"{recipe}-{data}-s{seed}"
    source = ["--dataset-type", "synthetic"] if data == "synthetic" else ["--train-data", str(digits / "train")]
    if recipe == "robust":
        pretrained = out / f"walkthrough-{data}-s{seed}" / "export"
        if not pretrained.is_dir():
            run("walkthrough", data, seed, out, digits, model)
        flags += f" --pretrained {pretrained}"
    command = [sys.executable, "-m", "clipag.finetune", *shlex.split(flags), *source, "--seed", str(seed),
               "--no-progress", "--output-dir", str(run_dir), "--resume", "latest"]  # a killed run goes on
    if not (run_dir / "export").is_dir():  # a finished run is evaluated again, not retrained
        subprocess.run(command, check=True, capture_output=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    attack = ["--norm", "l2", "--epsilon", "0.5", "--attack-steps", "10"]  # the README's robustness check
    evaluation = subprocess.run(
        [sys.executable, "-m", "clipag.eval", "--model", str(run_dir / "export"), "--data",
         "synthetic" if data == "synthetic" else str(digits / "val"), "--samples", "500", "--templates",
         "a photo of a {}.", "--workers", "0", "--threads", "1", "--no-progress", *attack],
        check=True, capture_output=True, text=True).stdout
    scores = dict(line.split(": ", 1) for line in evaluation.splitlines() if ": " in line)
    robust = next((float(v) for k, v in scores.items() if k.startswith("robust_acc/")), None)
    return {"recipe": recipe, "data": data, "seed": seed, "final_loss": logged[-1]["loss"],
            "chance_loss": logged[-1].get("chance_loss"), "clean_acc": float(scores["clean_acc"]),
            "robust_acc": robust, "not_learning": records[-1].get("not_learning") is not None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--data", nargs="*", default=["digits", "synthetic"], choices=["digits", "synthetic"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (each uses one thread)")
    p.add_argument("--model", default="clipag-tiny-32px", help="--model of the from-scratch recipes (a bundled "
                                                               "config or a JSON file)")
    p.add_argument("--out", default="runs/recipes", help="run folders, the digits data and results.jsonl")
    args = p.parse_args()
    out = Path(args.out)
    digits = make_digits(out / "digits") if "digits" in args.data else out / "digits"
    # the robust step needs the walkthrough's export: run the walkthroughs first
    jobs = [(r, d, s) for r in args.recipes for d in args.data for s in args.seeds]
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for batch in ([j for j in jobs if j[0] != "robust"], [j for j in jobs if j[0] == "robust"]):
            for result in pool.map(lambda job: run(*job, out, digits, args.model), batch):
                print(json.dumps(result), flush=True)
                results.append(result)
                with open(out / "results.jsonl", "a") as f:
                    f.write(json.dumps(result) + "\n")
    print("\n| recipe | data | seeds | final loss (chance) | zero-shot clean | L2 ε=0.5 PGD-10 | watch fired |")
    print("|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        for data in args.data:
            rows = [r for r in results if r["recipe"] == recipe and r["data"] == data]
            if not rows:
                continue
            losses = ", ".join(f"{r['final_loss']:.2f}" for r in rows)
            clean = ", ".join(f"{r['clean_acc']:.1%}" for r in rows)
            robust = ", ".join(f"{r['robust_acc']:.1%}" for r in rows)
            chance = statistics.median(r["chance_loss"] for r in rows if r["chance_loss"])
            fired = sum(r["not_learning"] for r in rows)
            print(f"| {recipe} | {data} | {len(rows)} | {losses} ({chance:.2f}) | {clean} | {robust} | "
                  f"{fired}/{len(rows)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
