"""Peak resident memory of ``clipag.load``: the model taking the tensors it read (now) against copying them into
freshly built weights (before), for a random-weight model written as a Hub-layout folder.

Each variant runs in its own process (peak RSS is per process), loads the folder on the CPU, then runs one
image forward pass, which reads every visual weight page. The file is written once, then read from the page cache.

    python benchmarks/load_memory.py                  # ViT-L-14
    python benchmarks/load_memory.py --arch ViT-B-32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
import torch
import clipag.loader as L
from clipag.model import load_weights

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB

if sys.argv[2] == "copy":  # the loader as it was: copy the file's tensors into the built model
    L.load_weights = lambda model, sd, source, assign=False: load_weights(model, sd, source, assign=False)
before = peak()
model, _ = L.load(sys.argv[1], device="cpu")
after_load = peak()
with torch.no_grad():
    model.encode_image(torch.rand(1, 3, model.visual.input_resolution, model.visual.input_resolution))
weights = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**30
print(json.dumps({"imports": before, "load": after_load, "forward": peak(), "weights": weights}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-L-14", help="an open_clip architecture (random weights)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / args.arch
        subprocess.run([sys.executable, str(Path(__file__).with_name("make_random_model.py")), args.arch,
                        str(folder)], check=True)
        rows = {}
        for variant in ("copy", "assign"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(folder), variant], check=True,
                                 capture_output=True, text=True).stdout
            rows[variant] = json.loads(out.strip().splitlines()[-1])
    weights = rows["assign"]["weights"]
    print(f"{args.arch} (random weights, {weights:.2f} GiB fp32), peak RSS in GiB, CPU:")
    print(f"{'':28s}{'after imports':>14s}{'after load':>12s}{'after 1 forward':>17s}")
    for variant, label in (("copy", "before (copy into model)"), ("assign", "now (model takes tensors)")):
        r = rows[variant]
        print(f"{label:28s}{r['imports']:14.2f}{r['load']:12.2f}{r['forward']:17.2f}")
    saved = rows["copy"]["load"] - rows["assign"]["load"]
    print(f"load peak above imports: {rows['copy']['load'] - rows['copy']['imports']:.2f} -> "
          f"{rows['assign']['load'] - rows['assign']['imports']:.2f} GiB ({saved:.2f} GiB less, "
          f"{saved / weights:.2f}x the weights)")


if __name__ == "__main__":
    main()
