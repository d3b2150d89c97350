"""Every script in examples/ runs, with a tiny model the test builds, and agrees with an independent reference."""

from __future__ import annotations

import runpy
import sys
import warnings
from pathlib import Path

import pytest
from finetune_fixtures import make_image_folder
from generate_fixtures import one_thread, save_hub_folder
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def run_example(script: Path, args: list[str], capsys, monkeypatch) -> str:
    """Run ``python SCRIPT ARGS`` in this process (as ``__main__``) and return what it printed."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    runpy.run_path(str(script), run_name="__main__")
    return capsys.readouterr().out


def test_zero_shot_folder_is_an_openai_clip_script_with_one_import_changed(openai_files, tmp_path, capsys,
                                                                             monkeypatch):
    folder = make_image_folder(tmp_path / "photos", per_class=2, classes=3)
    script = EXAMPLES / "zero_shot_folder.py"
    source = script.read_text()
    assert "import clipag as clip  # was: import clip\n" in source
    openai_version = source.replace("import clipag as clip  # was: import clip\n", "import clip\n")
    assert "clipag" not in openai_version  # nothing else of clipag's is used
    (tmp_path / "openai_version.py").write_text(openai_version)
    model = str(openai_files["torchscript"])

    ours = run_example(script, [str(folder), "--model", model, "--batch-size", "4"], capsys, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference's own deprecation warnings
        theirs = run_example(tmp_path / "openai_version.py", [str(folder), "--model", model, "--batch-size", "4"],
                             capsys, monkeypatch)
    ours_rows, theirs_rows = ([line.split("\t") for line in out.splitlines()[:-1]] for out in (ours, theirs))
    assert len(ours_rows) == 6 and [r[:2] for r in ours_rows] == [r[:2] for r in theirs_rows]  # same labels
    for a, b in zip(ours_rows, theirs_rows, strict=True):
        assert abs(float(a[2]) - float(b[2])) <= 2e-4
    assert ours.splitlines()[-1] == theirs.splitlines()[-1] and ours.splitlines()[-1].startswith("accuracy: ")
    labels = {row[0].split("/")[0] for row in ours_rows}
    assert labels == {d.name for d in folder.iterdir()}


@pytest.fixture(scope="module")
def trained_clip(tmp_path_factory):
    """A tiny CLIP trained clean on the synthetic classes (~5 s): accurate, and fooled by small attacks."""
    from finetune_fixtures import write_config

    from clipag.finetune import train

    folder = tmp_path_factory.mktemp("trained")
    with one_thread():
        result = train(["--model", write_config(folder), "--unlock-text", "--epsilon", "0", "--batch-size", "64",
                        "--steps", "60", "--lr", "2e-3", "--warmup", "5", "--workers", "0", "--no-progress",
                        "--output-dir", str(folder / "run")])
    return str(result.export_dir)


def test_attack_example_prints_what_clipag_eval_measures(trained_clip, tmp_path, capsys, monkeypatch):
    from clipag.eval import eval_batches, evaluate, load_pixel_model, zero_shot_weights

    data = make_image_folder(tmp_path / "data", per_class=6, classes=4)
    other = str(save_hub_folder(tmp_path / "random", size=32, seed=1))
    out = run_example(EXAMPLES / "attack_clip_vs_robust.py",
                      [str(data), "--model", other, "--baseline", trained_clip, "--epsilon", "2/255", "4/255",
                       "8/255", "--steps", "2", "--batch-size", "5"], capsys, monkeypatch)
    lines = out.splitlines()
    assert lines[0] == "24 images, 4 classes, 2-step PGD"
    assert lines[1].split() == ["model", "clean", "linf", "2/255", "linf", "4/255", "linf", "8/255"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert list(rows) == [trained_clip, other]  # side by side, the baseline first
    for name, printed in rows.items():
        model = load_pixel_model(name, "cpu")
        batches, classnames, total = eval_batches(str(data), 32, 5)
        weights = zero_shot_weights(model, classnames, ["a photo of a {}."], "cpu")
        expected = evaluate(model, batches, weights, "linf", [2 / 255, 4 / 255, 8 / 255], 2, None, "cpu", None, seed=0,
                            total=total, progress=False)
        accuracies = [expected["clean_acc"], *(v for k, v in expected.items() if k.startswith("robust_acc/"))]
        assert printed == [f"{a:.1%}" for a in accuracies]  # the same attack, with the same random starts
    clean, *_, attacked = (float(v.rstrip("%")) for v in rows[trained_clip])
    assert clean > 90 and attacked < clean - 50  # the trained model knows the classes, and PGD fools it


def test_prompt_grid_lays_out_the_generations_by_prompt_and_seed(tmp_path, capsys, monkeypatch):
    import clipag
    from clipag.images import labelled_grid

    model = str(save_hub_folder(tmp_path / "tiny", size=32))
    prompts, quick = ["a red apple", "a blue boat"], dict(steps=2, global_views=2, patch_views=2, prior=None)
    out = run_example(EXAMPLES / "prompt_grid.py", [*prompts, "--model", model, "--seeds", "2", "--steps", "2",
                                                    "--views", "2", "--patches", "2", "--no-prior",
                                                    "-o", str(tmp_path / "grid.png")], capsys, monkeypatch)
    assert out.strip() == str(tmp_path / "grid.png")
    expected = [[clipag.generate(p, model=model, seed=s, **quick) for s in range(2)] for p in prompts]
    assert expected[0][0].tobytes() != expected[0][1].tobytes()  # seeds differ, so the order is checked
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.tobytes() == labelled_grid(expected, row_labels=prompts).tobytes()


def test_finetune_then_load_reads_back_the_model_it_trained(tmp_path, capsys, monkeypatch):
    quick = ["--steps", "3", "--batch-size", "16", "--eval-samples", "48"]
    out = run_example(EXAMPLES / "finetune_then_load.py", [*quick, "--pretrain-steps", "3", "--output-dir",
                                                           str(tmp_path / "scratch")], capsys, monkeypatch)
    *_, trained, loaded = out.splitlines()
    assert trained.startswith(f"finetuned {tmp_path / 'scratch' / 'pretrain' / 'export'} → ")
    clean = trained.split("clean ")[1].split(",")[0]
    assert loaded.endswith(f"zero-shot accuracy {clean} on 48 held-out synthetic images")  # the same model

    start = save_hub_folder(tmp_path / "tiny", size=32)  # --model: weights the test built
    out = run_example(EXAMPLES / "finetune_then_load.py", [*quick, "--model", str(start), "--output-dir",
                                                           str(tmp_path / "given")], capsys, monkeypatch)
    assert f"finetuned {start} → {tmp_path / 'given' / 'robust' / 'export'}" in out
    assert not (tmp_path / "given" / "pretrain").exists()
