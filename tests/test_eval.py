"""``python -m clipag.eval``: zero-shot accuracy, clean and under PGD, on folders, CSV/TSV and shards."""

import contextlib
import csv
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from finetune_fixtures import TEST_CONFIG, make_image_folder

from clipag.datasets import read_image_folder
from clipag.eval import PixelCLIP, _eps_name, eval_batches, evaluate, load_templates, zero_shot_weights
from clipag.finetune.export import export_model
from clipag.model import build_model


@pytest.fixture
def tiny_export(tmp_path):
    torch.manual_seed(0)
    return export_model(build_model(TEST_CONFIG), TEST_CONFIG, {"size": 32}, tmp_path / "model")


def test_eval_cli_writes_jsonl_and_tensorboard(tmp_path, tiny_export):
    root = make_image_folder(tmp_path / "val", per_class=3, classes=3)
    (root / "classnames.txt").write_text("red apple\nsail boat\nsports car\n")
    (root / "boat" / "corrupt.png").write_bytes(b"not a png")
    out = tmp_path / "metrics.jsonl"
    proc = subprocess.run([sys.executable, "-m", "clipag.eval", "--model", str(tiny_export), "--data", str(root),
                           "--norm", "l2", "--epsilon", "0.1", "0.5", "--attack-steps", "3", "--workers", "0",
                           "--output", str(out), "--tensorboard", str(tmp_path / "tb"), "--no-progress"],
                          capture_output=True, text=True, check=True)
    assert "clean_acc" in proc.stdout
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["samples"] == 9 and record["skipped"] == 1
    assert 0 <= record["robust_acc/l2_0.5"] <= record["robust_acc/l2_0.1"] <= record["clean_acc"] <= 1
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_attack_breaks_a_classifier_that_is_right_on_clean_images(tiny_export, tmp_path):
    """Make the zero-shot weights the model's own clean image embeddings: 100% clean, then PGD flips them."""
    from clipag.eval import load_pixel_model

    model = load_pixel_model(str(tiny_export), "cpu")
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        weights = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    batches = [(images, torch.arange(4), 0)]
    result = evaluate(model, batches, weights, "linf", [0.0001, 16 / 255], steps=10, progress=False)
    assert result["clean_acc"] == 1.0
    assert result["attack_success_rate/linf_16/255"] > result["attack_success_rate/linf_0.0001"]
    assert result["robust_acc/linf_16/255"] < 1.0


def test_helpers(tmp_path):
    root = make_image_folder(tmp_path / "f", per_class=1, classes=2)
    samples, names = read_image_folder(root)
    assert names == ["apple", "boat"] and [label for _, label in samples] == [0, 1]
    assert len(load_templates("simple")) == 7 and len(load_templates("openai")) == 80
    assert load_templates("a {} here") == ["a {} here"]
    assert _eps_name(4 / 255) == "4/255" and _eps_name(0.5) == "0.5"
    assert _eps_name(1.0) == "1" and _eps_name(2.0) == "2" and _eps_name(1.5) == "1.5"  # not 255/255, 510/255
    torch.manual_seed(0)
    model = PixelCLIP(build_model(TEST_CONFIG))
    weights = zero_shot_weights(model, names, ["a {}.", "the {}."], "cpu")
    assert weights.shape == (2, 32) and torch.allclose(weights.norm(dim=-1), torch.ones(2))


@contextlib.contextmanager
def data_warnings():
    """Warnings of ``clipag.data`` (the readers finetune and eval share), whatever handlers a run installed."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("clipag.data")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _labelled_csv(tmp_path, root, extra_rows=()):
    samples, names = read_image_folder(root)
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title", "label"])
        for file, label in samples:
            writer.writerow([os.path.relpath(file, tmp_path), f"a photo of a {names[label]}.", names[label]])
        writer.writerows(extra_rows)
    return path


def test_eval_reads_a_csv_with_labels_exactly_as_the_folder(tmp_path, tiny_export):
    from clipag.eval import load_pixel_model

    root = make_image_folder(tmp_path / "val", per_class=3, classes=3)
    path = _labelled_csv(tmp_path, root, [["val/boat/missing.png", "a photo of a boat.", "boat"]])
    model = load_pixel_model(str(tiny_export), "cpu")
    results = []
    with data_warnings() as warned:
        for data in (str(root), str(path)):
            batches, names, total = eval_batches(data, 32, 4)
            weights = zero_shot_weights(model, names, ["a photo of a {}."], "cpu")
            results.append(evaluate(model, batches, weights, "l2", [0.5], steps=2, total=total, progress=False))
    folder, table = results
    assert table["samples"] == folder["samples"] == 9 and table["skipped"] == 1
    assert table["clean_acc"] == folder["clean_acc"] and table["robust_acc/l2_0.5"] == folder["robust_acc/l2_0.5"]
    (message,) = [r.getMessage() for r in warned]
    assert message.startswith("skipping undecodable image ") and "missing.png (FileNotFoundError" in message


def test_eval_cli_on_a_tsv_with_class_indices_and_threads(tmp_path, tiny_export, capsys):
    from clipag.eval import main

    root = make_image_folder(tmp_path / "val", per_class=2, classes=2)
    samples, _ = read_image_folder(root)
    (tmp_path / "labels.tsv").write_text("filepath\tlabel\n" + "".join(f"{f}\t{y}\n" for f, y in samples))
    (tmp_path / "names.txt").write_text("red apple\nsail boat\n")
    argv = ["--model", str(tiny_export), "--data", str(tmp_path / "labels.tsv"), "--epsilon", "--workers", "0",
            "--threads", "1", "--no-progress"]
    threads = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match="are class indices; pass the class names with --classnames"):
            main(argv)
        assert main([*argv, "--classnames", str(tmp_path / "names.txt")]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "samples: 4" in out and "skipped: 0" in out


def test_finetune_and_eval_reject_the_same_bad_csv_rows_alike(tmp_path):
    from clipag.datasets import LabelledImages
    from clipag.finetune.data import CsvSource

    root = make_image_folder(tmp_path / "val", per_class=1, classes=2)
    path = _labelled_csv(tmp_path, root, [["val/apple/0000.png", "a photo, unquoted", "apple", "extra"],
                                          ["val/boat/0001.png"]])
    kw = dict(image_size=32, context_length=16, seed=0, augment=False)
    errors = []
    for read in (lambda: CsvSource(str(path), None, "filepath", "title", **kw),
                 lambda: LabelledImages.from_csv(str(path), 32, None, "filepath", "label", None)):
        with pytest.raises(ValueError, match=r"2 malformed row\(s\) \(line 4, 5\)") as error:
            read()
        errors.append(str(error.value).split(": a missing")[0])
    assert errors[0] == errors[1]
    with pytest.raises(ValueError, match=r"needs column\(s\) 'klass' \(--csv-label-key\)"):
        LabelledImages.from_csv(str(path), 32, None, "filepath", "klass", None)
    with pytest.raises(ValueError, match=r"needs column\(s\) 'caption' \(--csv-caption-key\)"):
        CsvSource(str(path), None, "filepath", "caption", **kw)


def test_eval_reads_webdataset_shards_with_a_class_field(tmp_path, tiny_export):
    import webdataset as wds
    from finetune_fixtures import png

    from clipag.finetune.synthetic import SyntheticImages

    source = SyntheticImages(3, 32)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        for i in range(7):
            pixels, _, label = source.item(i)
            record = {"__key__": f"{i:05d}", "png": png(pixels), "cls": str(label)}
            if i == 6:
                del record["cls"]
            sink.write(record)
    (tmp_path / "names.txt").write_text("\n".join(source.classnames))
    with data_warnings() as warned:
        batches, names, _ = eval_batches(str(tmp_path / "00000.tar"), 32, 4, classnames=str(tmp_path / "names.txt"))
        seen = [(labels.tolist(), skipped) for _, labels, skipped in batches]
    assert names == source.classnames
    assert seen == [([0, 1, 2, 0], 0), ([1, 2], 1)]
    assert [r.getMessage().split(": ")[-1] for r in warned] == ["no image (jpg/jpeg/png/webp) or label (cls)"]
    first, _, _ = eval_batches(str(tmp_path / "00000.tar"), 32, 4, samples=3, classnames=str(tmp_path / "names.txt"))
    assert sum(len(labels) for _, labels, _ in first) == 3


def test_eval_counts_a_corrupt_tar_header_mid_shard(tmp_path, tiny_export):
    """Eval reads shards with finetune's reader: a bad header is a skipped sample and a warning, not an early end
    that drops every later sample from the accuracy without a word."""
    import webdataset as wds
    from finetune_fixtures import break_header, png

    from clipag.finetune.synthetic import SyntheticImages

    source = SyntheticImages(3, 32)
    shard = tmp_path / "00000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i in range(8):
            pixels, _, label = source.item(i)
            sink.write({"__key__": f"{i:05d}", "cls": str(label), "png": png(pixels)})  # cls first, png last
    break_header(shard, "00003.png")
    (tmp_path / "names.txt").write_text("\n".join(source.classnames))
    with data_warnings() as warned:
        batches, _, _ = eval_batches(str(shard), 32, 16, classnames=str(tmp_path / "names.txt"))
        (labels, skipped), = [(labels.tolist(), skipped) for _, labels, skipped in batches]
    assert labels == [source.item(i)[2] for i in (0, 1, 2, 4, 5, 6, 7)]  # all but sample 3, whose image was lost
    assert skipped == 2  # the damaged stretch, and sample 3's label left without its image
    messages = [r.getMessage() for r in warned]
    assert any(str(shard) in m and "bad tar header at byte" in m for m in messages), messages
