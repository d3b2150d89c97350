"""The README is tested: every command of its ```bash blocks is classified below, and every one that can run
offline with tiny models runs, as a user would type it (a shell, the `clipag` console script, a folder of its own).

Each command gets the rule with the longest matching prefix: ``run`` it as written, ``sub`` run it with the listed
substitutions (a tiny model for the real weights, fewer steps), or ``skip`` it for the reason given (network, a
GPU cluster, an upstream script that is not in this repository...). A README command that no rule matches fails
the test: a new command must be classified here. The quick start runs in the folder where the session's
``python -m clipag.demo --quick`` ran (conftest.quick_demo, shared with tests/test_demo.py), so its commands find
``runs/pag_demo_quick/`` exactly as written. The commands run in README order (the walkthrough's evaluations read
what its finetunes wrote), so run this module as a whole.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
QUICK_MODEL = "runs/pag_demo_quick/robust/export"


def _strip_comment(line: str) -> str:
    """``line`` without its shell comment (a ``#`` outside quotes that starts a word)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(text: str = README) -> list[str]:
    """Every command of the ```bash blocks: continuation lines joined, comments dropped, ``a && b`` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for part in _strip_comment(line).split(" && "):
                part = " ".join(part.split())
                if part and part not in commands:
                    commands.append(part)
    return commands


def set_option(command: str, option: str, value: str) -> str:
    """``command`` with ``option VALUE`` (replaced if present, else appended)."""
    pattern = rf"(?<!\S){re.escape(option)} \S+"
    if re.search(pattern, command):
        return re.sub(pattern, lambda m: f"{option} {value}", command)
    return f"{command} {option} {value}"


def tiny_generate(command: str) -> str:
    for option, value in (("--model", "{tiny}"), ("--steps", "2"), ("--views", "2"), ("--patches", "2")):
        command = set_option(command, option, value)
    return command.replace('"..."', '"a red apple"')


def tiny_draw(command: str) -> str:
    command = command.replace("path/to/openai-ViT-B-32.pt", "{tiny2}")
    for option, value in (("--model", "{tiny}"), ("--steps", "2"), ("--strokes", "8"), ("--size", "64")):
        command = set_option(command, option, value)
    return command


def tiny_vqgan(command: str) -> str:
    command = command.replace("-s 384 256", "-s 32 32") if " -s " in command else command + " -s 32 32"
    command = command.replace("model.yaml", "{vqgan_yaml}")
    command = command.replace("last.ckpt", "{vqgan_ckpt}").replace("start.png", "{start_png}")
    if "--vqgan-config" not in command:
        command += " --vqgan-config {vqgan_yaml} --vqgan-checkpoint {vqgan_ckpt}"
    for option, value in (("--model", "{tiny}"), ("--steps", "2"), ("--cutn", "4")):
        command = set_option(command, option, value)
    return command


def tiny_style(command: str) -> str:
    command = command.replace("photo.jpg", "{photo}").replace("hf-hub:timm/vit_base_patch32_clip_224.openai",
                                                              "{tiny2}")
    for option, value in (("--model", "{tiny}"), ("--steps", "2"), ("--crops", "4"), ("--crop-size", "32")):
        command = set_option(command, option, value)
    return command + " --size 64 64"


def fewer(**replacements: str) -> Callable[[str], str]:
    """Replace ``--flag N`` by ``--flag M`` (``steps="20"`` turns ``--steps 300`` into ``--steps 20``)."""
    def substitute(command: str) -> str:
        for flag, value in replacements.items():
            command = set_option(command, "--" + flag.replace("_", "-"), value)
        return command
    return substitute


PROMPTS_TXT = "printf 'a red apple\\na blue car\\n' > prompts.txt"
PROMPTS_JSONL = ("printf '%s\\n' '{\"prompt\": \"a red apple\", \"seed\": 3, \"steps\": 3}' "
                 "'{\"prompt\": \"a lighthouse\", \"lr\": 0.02}' > prompts.jsonl")


@dataclass(frozen=True)
class Rule:
    prefix: str
    kind: str  # run | sub | skip | demo (the session's quick_demo fixture runs it)
    why: str = ""  # skip: the reason; sub: what is substituted
    sub: Callable[[str], str] | None = None
    prints: list[str] = field(default_factory=list)  # run/sub: stdout, line by line, must be exactly this


INSTALLS = ("installs clipag: .ci/run runs the README's `pip install -e \".[dev]\"` in a fresh venv, and "
            "tests/test_extras.py checks what each command says when its extra is missing")
RULES = [
    # environments and installs
    Rule("python -m venv .venv", "skip", "makes a venv: the suite already runs in one (.ci/run makes fresh ones)"),
    Rule(". .venv/bin/activate", "skip", "activates a venv: the suite already runs in one"),
    Rule("pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu", "skip",
         "downloads PyTorch's CPU build (download.pytorch.org is not reachable offline)"),
    Rule("pip install -e", "skip", INSTALLS),
    Rule("pip install datasets", "skip", "a package download"),
    Rule("pip install img2dataset", "skip", "a package download"),
    # the quick start, as written, in the folder where the quick demo ran
    Rule("python -m clipag.demo --quick", "demo"),
    Rule(f'clipag generate "a yellow bar on a black background" --model {QUICK_MODEL}', "run",
         prints=["bars-000.png", "bars-001.png", "bars-002.png", "bars-grid.png"]),
    Rule(f'clipag draw "a yellow bar on a white background" --model {QUICK_MODEL}', "sub", "--steps 250 → 3",
         fewer(steps="3"), prints=["bar.svg", "bar.png"]),
    # real weights and downloads
    Rule("clipag download ViT-B/32", "skip", "downloads CLIPAG (1.3 GB from Zenodo); tests/test_downloads.py runs "
                                             "the download path against a local server"),
    Rule("clipag download hf-hub:", "skip", "downloads from the Hugging Face Hub; tests/test_hub_offline.py reads "
                                            "a Hub cache the tests build"),
    Rule("clipag download vqgan_", "skip", "downloads a VQGAN (~1 GB); tests/vqgan_clip/test_vqgan_registry.py "
                                           "runs the download path against a local server"),
    Rule("clipag import ViT-B/32 CLIPAG_ViTB32.pt", "skip", "needs the 1.3 GB file; tests/test_cli.py and "
                                                            "tests/test_downloads.py import replicas"),
    Rule("clipag prior build Maysee/tiny-imagenet", "skip", "downloads a Hugging Face dataset"),
    Rule("clipag prior build ~/photos/by-class", "sub", "~/photos/by-class → a folder of small class images",
         lambda c: c.replace("~/photos/by-class", "{photos}")),
    # the generators with tiny models (the real ones are downloads) and a few steps
    Rule("clipag generate", "sub", "--model → a tiny CLIP, 2 steps of 2+2 views", tiny_generate),
    Rule("clipag draw", "sub", "--model → a tiny CLIP, 2 steps, 8 strokes, 64 px", tiny_draw),
    Rule("clipag vqgan", "sub", "a tiny CLIP and a tiny taming VQGAN, 32 px, 2 steps", tiny_vqgan),
    Rule("clipag style", "sub", "a tiny CLIP, a random VGG19 in TORCH_HOME, 64 px, 2 steps", tiny_style),
    # many images: the prompt files the commands name, written first
    Rule("clipag generate --prompts prompts.txt", "sub", "a two-line prompts.txt, a tiny CLIP, 2 steps",
         lambda c: f"{PROMPTS_TXT} && {tiny_generate(c)}"),
    Rule("clipag generate --prompts prompts.jsonl", "sub", "a prompts.jsonl with per-line settings, a tiny CLIP",
         lambda c: f"{PROMPTS_JSONL} && {tiny_generate(c)}"),
    Rule("clipag draw --prompts prompts.txt", "sub", "a two-line prompts.txt, a tiny CLIP, 2 steps",
         lambda c: f"{PROMPTS_TXT} && {tiny_draw(c)}"),
    Rule("clipag style photos/ --prompts styles.txt", "sub", "a photos/ folder of two photos, a two-line styles.txt",
         lambda c: "mkdir -p photos && cp {photo} photos/a.png && cp {photo} photos/b.png && "
                   f"printf 'an oil painting\\nfire\\n' > styles.txt && {tiny_style(c)}"),
    Rule("torchrun --nproc_per_node 8 -m clipag.cli generate", "skip",
         "8 GPUs; tests/test_scale_distributed.py runs the same command under torchrun with 2 CPU processes"),
    Rule("mkdir -p outputs", "run"),
    # Hugging Face: the export with a tiny CLIP in place of CLIPAG's 1.3 GB download
    Rule("clipag export ViT-B/32", "sub", "ViT-B/32 → a tiny CLIP", lambda c: c.replace("ViT-B/32", "{tiny}", 1)),
    Rule("clipag export ViT-B/32 clipag-vit-b-32 --push-to-hub", "skip",
         "uploads to the Hugging Face Hub; tests/hf/ pushes to a stand-in Hub on 127.0.0.1"),
    Rule("clipag run guidance.py", "skip", "a placeholder for the reader's transformers script; tests/hf/ runs "
                                           "tests/scripts/transformers_clip_calls.py through clipag run"),
    Rule("clipag run --model FARE2-ViT-L/14 guidance.py", "skip", "the same placeholder script (see above)"),
    # upstream scripts: not part of this repository
    Rule("clipag run generate.py", "skip", "nerdyrodent/VQGAN-CLIP's script, not in this repository; "
                                           "tests/vqgan_clip/test_vqgan_upstream.py runs its calls"),
    Rule("clipag run --device cpu generate.py", "skip", "nerdyrodent/VQGAN-CLIP's script (see above)"),
    Rule("clipag run --model FARE2-ViT-L/14 some_clip_script.py", "skip",
         "a placeholder script; tests/test_cli.py runs `clipag run --model` with a tiny model"),
    Rule("clipag run --precision fp32 predict.py", "skip", "kvfrans/clipdraw's predict.py, not in this repository; "
                                                           "tests/test_cog_standin.py runs its calls"),
    Rule("clipag run --device cpu driver.py", "skip", "kvfrans/clipdraw's driver (see above)"),
    Rule("clipag run --device cpu train_CLIPstyler.py", "skip", "cyclomon/CLIPstyler's script, not in this "
                                                                "repository; tests/clipstyler/ runs its calls"),
    # the finetuning walkthrough, with fewer steps and samples
    Rule("python -m clipag.finetune --model clipag-tiny-32px", "sub", "--steps 300 → 20", fewer(steps="20")),
    Rule("python -m clipag.finetune --pretrained runs/tiny-clean/export", "sub", "--steps 300 → 20",
         fewer(steps="20")),
    Rule("python -m clipag.eval --model runs/tiny-", "sub", "--samples 500 → 64", fewer(samples="64")),
    Rule("img2dataset", "skip", "downloads CC3M"),
    Rule("torchrun --nproc_per_node 8", "skip", "8 GPUs and 12 M web images"),
    Rule("python -m clipag.demo", "skip", "13 minutes; its --quick version is the quick start's, run above"),
    Rule("python examples/", "skip", "tests/test_examples.py runs every example with a tiny model"),
    Rule("python -m pytest", "skip", "this is the test suite"),
]


def rule_for(command: str) -> Rule | None:
    matches = [rule for rule in RULES if command.startswith(rule.prefix)]
    return max(matches, key=lambda rule: len(rule.prefix)) if matches else None


def test_every_readme_command_is_classified_and_every_rule_is_used():
    commands = readme_commands()
    assert len(commands) > 40 and 'python -m clipag.demo --quick' in commands
    unclassified = [command for command in commands if rule_for(command) is None]
    assert not unclassified, f"classify these README commands in tests/test_readme.py: {unclassified}"
    unused = [rule.prefix for rule in RULES if not any(rule_for(c) is rule for c in commands)]
    assert not unused, f"rules that match no README command (stale?): {unused}"
    for rule in RULES:
        assert rule.kind in ("run", "sub", "skip", "demo") and (rule.why or rule.kind in ("run", "demo")), rule


@pytest.fixture(scope="module")
def sandbox(quick_demo, tmp_path_factory):
    """The quick start's folder, plus what the substitutions name: tiny CLIPs, a tiny VQGAN, a photo, a class
    folder, a random VGG19 in TORCH_HOME. Returns ``(cwd, env, names)``."""
    import importlib.util

    from clipag.adapters.vqgan_clip.vqgan import build_from_config
    from generate_fixtures import save_hub_folder
    from PIL import Image
    from vqgan_fixtures import fill_like_fixture, tiny_config, write_lightning_ckpt, write_yaml

    fixtures_file = ROOT / "tests" / "clipstyler" / "clipstyler_fixtures.py"
    spec = importlib.util.spec_from_file_location("clipstyler_fixtures", fixtures_file)
    clipstyler_fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clipstyler_fixtures)
    assets = tmp_path_factory.mktemp("readme_assets")
    config = tiny_config()
    vqgan = build_from_config(config["model"])
    fill_like_fixture(vqgan)
    photos = assets / "by-class"
    for colour in ("red", "blue"):
        (photos / colour).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), colour).save(photos / colour / f"{i}.png")
    Image.new("RGB", (32, 32), "gray").save(assets / "start.png")
    names = {"tiny": save_hub_folder(assets / "tiny", size=32), "tiny2": save_hub_folder(assets / "tiny2", seed=1),
             "vqgan_yaml": write_yaml(assets / "tiny.yaml", config),
             "vqgan_ckpt": write_lightning_ckpt(assets / "tiny.ckpt", vqgan.state_dict()),
             "photo": clipstyler_fixtures.content_image(assets / "photo.png"), "photos": photos,
             "start_png": assets / "start.png"}
    clipstyler_fixtures.write_random_vgg19(assets / "torch_home")
    env = {**quick_demo.env, "TORCH_HOME": str(assets / "torch_home"), "OMP_NUM_THREADS": "1",  # tiny models
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return quick_demo.cwd, env, {key: shlex.quote(str(value)) for key, value in names.items()}


RUNNABLE = [c for c in readme_commands() if (r := rule_for(c)) is not None and r.kind in ("run", "sub")]


@pytest.mark.parametrize("command", RUNNABLE, ids=[re.sub(r"[^\w.-]+", "_", c)[:70] for c in RUNNABLE])
def test_readme_command_runs(command, sandbox):
    cwd, env, names = sandbox
    rule = rule_for(command)
    line = rule.sub(command) if rule.kind == "sub" else command
    for key, value in names.items():  # not str.format: commands hold braces of their own ("a photo of a {}.")
        line = line.replace("{" + key + "}", value)
    proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    if rule.prints:
        assert proc.stdout.split() == rule.prints, proc.stdout
    written = [line for line in proc.stdout.split() if line.endswith((".png", ".svg", ".gif", ".safetensors"))]
    for path in written:  # what a command says it wrote is there
        assert (cwd / path).is_file(), path
    if command.startswith("python -m clipag.eval"):
        keys = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
        assert {"clean_acc", "robust_acc/l2_0.5", "attack_success_rate/l2_0.5"} <= set(keys), proc.stdout


def _mask_numbers(text: str) -> list[str]:
    return [re.sub(r"\d+(\.\d+)?", "N", line) for line in text.strip().splitlines()]


def test_the_quick_start_demo_is_the_readmes_command_and_prints_what_it_shows(quick_demo):
    """The demo's printed numbers depend on the CPU; its lines, with numbers masked, must be the README's."""
    assert [Path(quick_demo.argv[0]).name.startswith("python"), *quick_demo.argv[1:]] == \
        [True, "-m", "clipag.demo", "--quick"]
    assert rule_for("python -m clipag.demo --quick").kind == "demo"
    start = README.index("```text\n", README.index("## Quick start")) + len("```text\n")
    shown = README[start:README.index("```", start)]
    assert _mask_numbers(quick_demo.stdout) == _mask_numbers(shown)


def test_clipag_models_prints_what_the_readme_shows(tmp_path):
    """The README shows `clipag models` on a fresh machine (HOME=/home/you)."""
    start = README.index("```text\n", README.index("### Models")) + len("```text\n")
    shown = README[start:README.index("```", start)]
    env = {k: v for k, v in os.environ.items() if k not in ("CLIPAG_CACHE", "HF_HOME")}
    env.update(HOME=str(tmp_path), HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "clipag.cli", "models"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.replace(str(tmp_path), "/home/you").strip() == shown.strip()


def test_the_walkthrough_numbers_are_what_its_commands_print():
    """The eval output the README shows is the table's first seed, as the text says (the commands were run with
    these exact flags; test_readme_command_runs runs them with fewer steps)."""
    section = README[README.index("A CPU walkthrough"):README.index("**Rebuilding CLIPAG-like ViT-B/32.**")]
    blocks = re.findall(r"```text\n(.*?)```", section, re.S)
    printed = [dict(line.split(": ", 1) for line in block.splitlines()) for block in blocks]
    assert [p["model"] for p in printed] == ["runs/tiny-clean/export", "runs/tiny-robust/export"]
    clean_row = next(line for line in section.splitlines() if line.startswith("| clean model"))
    robust_row = next(line for line in section.splitlines() if line.startswith("| robust model"))
    for row, shown in ((clean_row, printed[0]), (robust_row, printed[1])):
        cells = [cell.strip() for cell in row.split("|")[2:4]]
        first = [float(cell.split(",")[0].rstrip("%")) / 100 for cell in cells]
        assert first == [float(shown["clean_acc"]), float(shown["robust_acc/l2_0.5"])], (row, shown)
    assert json.dumps(printed)  # plain text, nothing else in the blocks
