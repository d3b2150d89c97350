"""VQGAN+CLIP with a vanilla and a robust CLIP, measured offline on the PAG demo's coloured shapes.

    python -m clipag.demo --out runs/pag_demo                       # once: the vanilla and robust 32 px CLIPs
    python examples/vqgan_clip_pag_demo.py --demo runs/pag_demo --out runs/vqgan_pag

1. trains a small taming-format VQGAN (f4, 128 codes) to reconstruct rendered shapes: the real VQGANs can't be
   downloaded here, and a random VQGAN decodes only noise, so this is the smallest honest generator;
2. runs VQGAN+CLIP (``clipag.adapters.vqgan_clip``, VQGAN-CLIP's defaults at 32 px) with each CLIP on the 12
   class prompts, same seeds;
3. scores every image with the demo's independent judge (CNNs trained on fresh renders plus a "no shape" class).
Writes ``results.json`` and ``grid.png`` (rows: prompts; column groups: models).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from clipag.adapters.vqgan_clip import VQGANCLIP, VQGANCLIPConfig
from clipag.adapters.vqgan_clip.vqgan import VQModel

from clipag.checkpoints import save_safetensors
from clipag.demo.judge import NONE, train_judge
from clipag.demo.shapes import CLASSES, class_prompt, render_pool
from clipag.images import labelled_grid, save_png, to_pil

VQGAN_PARAMS = {"embed_dim": 16, "n_embed": 128, "lossconfig": None,
                "ddconfig": {"double_z": False, "z_channels": 16, "resolution": 32, "in_channels": 3, "out_ch": 3,
                             "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [8],
                             "dropout": 0.0}}


def train_vqgan(out: Path, steps: int, batch: int = 16, seed: int = 0) -> tuple[Path, Path, float]:
    """A small VQGAN on rendered shapes (reconstruction + taming's codebook loss); returns yaml, weights, val MSE."""
    torch.manual_seed(seed)
    images, _ = render_pool(4000, 32, seed + 500)
    model = VQModel(**VQGAN_PARAMS)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = images[torch.randint(0, len(images) - 500, (batch,), generator=generator)] * 2 - 1
        reconstruction, codebook_loss = model(x)
        loss = F.mse_loss(reconstruction, x) + codebook_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        held_out = images[-500:] * 2 - 1
        mse = F.mse_loss(model(held_out)[0], held_out).item() / 4  # in [0, 1] pixel units
    config = out / "vqgan.yaml"
    config.write_text(yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel", "params": VQGAN_PARAMS}}))
    weights = out / "vqgan.safetensors"
    save_safetensors(model.state_dict(), weights)
    return config, weights, mse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="runs/pag_demo", help="python -m clipag.demo's output folder")
    parser.add_argument("--model", action="append", default=None, help="instead of --demo: CLIPs to compare")
    parser.add_argument("--label", action="append", default=None)
    parser.add_argument("--out", default="runs/vqgan_pag")
    parser.add_argument("--vqgan-steps", type=int, default=300)
    parser.add_argument("--retrain", action="store_true", help="train the VQGAN again even if --out has one")
    parser.add_argument("--steps", type=int, default=100, help="VQGAN+CLIP steps per image")
    parser.add_argument("--cutn", type=int, default=32, help="cutouts per step")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--classes", type=int, default=len(CLASSES), help="use the first N of the 12 classes")
    parser.add_argument("--judge-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = args.model or [str(Path(args.demo) / name / "export") for name in ("vanilla", "robust")]
    labels = args.label or (["vanilla", "robust"] if args.model is None else models)
    t0 = time.perf_counter()
    if (out / "vqgan.json").is_file() and not args.retrain:  # the VQGAN of an earlier run of this script
        config, weights, mse = out / "vqgan.yaml", out / "vqgan.safetensors", json.loads(
            (out / "vqgan.json").read_text())["reconstruction_mse"]
    else:
        config, weights, mse = train_vqgan(out, args.vqgan_steps)
        (out / "vqgan.json").write_text(json.dumps({"reconstruction_mse": mse, "steps": args.vqgan_steps}))
    print(f"VQGAN ready after {time.perf_counter() - t0:.0f} s, held-out reconstruction MSE {mse:.4f}", flush=True)
    classes = CLASSES[: args.classes]
    prompts = [class_prompt(cls) for cls in classes]
    labels_t = torch.tensor([i for i in range(len(classes)) for _ in args.seeds])
    judge = train_judge(steps=args.judge_steps)
    settings = VQGANCLIPConfig(steps=args.steps, size=(32, 32), cutn=args.cutn)
    cells: list[list] = [[] for _ in prompts]
    results: dict[str, dict] = {}
    for model, label in zip(models, labels, strict=True):
        gen = VQGANCLIP(model, config=config, checkpoint=weights, device="cpu", settings=settings)
        tensors = []
        for row, prompt in enumerate(prompts):
            for seed in args.seeds:
                result = gen.run(prompt, seed=seed)
                tensors.append(result.tensor)
                cells[row].append(to_pil(result.tensor))
        images = torch.cat(tensors)
        predicted, forced = judge.predict(images), judge.forced_choice(images)
        results[label] = {"model": model, "judge_accuracy": (predicted == labels_t).float().mean().item(),
                          "forced_choice": (forced == labels_t).float().mean().item(),
                          "rejected": (predicted == NONE).float().mean().item()}
        print(label, results[label], flush=True)
    grid = labelled_grid(cells, row_labels=prompts, group_labels=labels, group_size=len(args.seeds), cell_size=64,
                         label_width=150)
    save_png(grid, out / "grid.png")
    summary = {"vqgan_reconstruction_mse": mse, "chance": 1 / len(classes), "images_per_model": len(labels_t),
               "settings": {"steps": args.steps, "seeds": args.seeds, "cutn": args.cutn,
                            "vqgan_steps": args.vqgan_steps},
               "models": results, "seconds": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(out / "results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
