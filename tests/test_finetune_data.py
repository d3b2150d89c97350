"""Data sources: webdataset/CSV/folder/synthetic, corrupt samples skipped and counted, exact resumption."""

import logging
from types import SimpleNamespace

import pytest
import torch
from finetune_fixtures import break_header, make_csv, make_image_folder, make_shards

from clipag.finetune.data import build_source, make_loader


def _args(**kw):
    base = dict(dataset_type="synthetic", train_data=None, seed=0, augment=True, synthetic_classes=4,
                synthetic_size=24, classnames=None, templates="a photo of a {}.", csv_separator=None,
                csv_img_key="filepath", csv_caption_key="title", dataset_resampled=False,
                train_data_upsampling_factors=None, shuffle_window=4, image_key="jpg;png", caption_key="txt",
                train_num_samples=None)
    return SimpleNamespace(**{**base, **kw})


def _take(source, n, batch=4, rank=0, world=1, workers=0, consumed=0, positions=None):
    loader = make_loader(source, batch, rank, world, workers, consumed, positions or {}, pin_memory=False)
    out, it = [], iter(loader)
    for _ in range(n):
        out.append(next(it))
    return out


def test_webdataset_skips_and_counts_corrupt_samples(tmp_path, caplog):
    urls = make_shards(tmp_path / "shards", shards=2, per_shard=6, corrupt=("000000003", "000000008"))
    source = build_source(_args(dataset_type="webdataset", train_data=urls), 32, 16)
    with caplog.at_level(logging.WARNING, logger="clipag.finetune"):
        batches = _take(source, 3, batch=4)  # 12 records, 10 decodable: the third batch wraps into epoch 1
    assert [b["images"].shape for b in batches] == [torch.Size([4, 3, 32, 32])] * 3
    assert sum(int(b["skipped"]) for b in batches) == 2
    assert "undecodable" in caplog.text and "000000003" in caplog.text
    keys = torch.cat([b["tokens"] for b in batches[:2]])
    assert len(torch.unique(keys, dim=0)) == 8  # captions are distinct ("... number i"): nothing repeats in epoch 0
    assert batches[0]["images"].min() >= 0 and batches[0]["images"].max() <= 1


def test_webdataset_sources_resampling_and_truncated_shard(tmp_path):
    a = make_shards(tmp_path / "a", shards=2, per_shard=3)
    b = make_shards(tmp_path / "b", shards=1, per_shard=3)
    broken = tmp_path / "b" / "00000.tar"
    broken.write_bytes(broken.read_bytes()[:700])  # a shard cut off mid-file
    source = build_source(_args(dataset_type="webdataset", train_data=f"{a}::{b}", dataset_resampled=True,
                                train_data_upsampling_factors="1::3"), 32, 16)
    assert len(source.shards) == 3
    drawn = [source.units(epoch, 0, 1)[0] for epoch in range(40)]
    assert 20 < sum("/b/" in shard for shard in drawn) < 40  # source b is weighted 3:1
    batches = _take(source, 8, batch=3)  # the seeded draws reach the broken shard in the 5th epoch
    assert all(len(b["images"]) == 3 for b in batches)
    assert sum(int(b["skipped"]) for b in batches) >= 1  # the truncated shard was met and counted


def test_resume_from_position_yields_the_same_batches(tmp_path):
    urls = make_shards(tmp_path / "shards", shards=4, per_shard=5)
    source = build_source(_args(dataset_type="webdataset", train_data=urls), 32, 16)
    full = _take(source, 6, batch=3, workers=2)
    positions = {}
    for b in full[:3]:
        positions[int(b["position"][0])] = tuple(b["position"][1:].tolist())
    resumed = _take(source, 3, batch=3, workers=2, consumed=3, positions=positions)
    for a, b in zip(full[3:], resumed, strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["tokens"], b["tokens"])


def test_ranks_read_disjoint_data(tmp_path):
    source = build_source(_args(synthetic_size=16), 32, 16)
    seen = [torch.cat([b["images"] for b in _take(source, 2, batch=4, rank=r, world=2)]) for r in (0, 1)]
    flat = [s.flatten(1) for s in seen]
    assert not any(torch.equal(x, y) for x in flat[0] for y in flat[1])


def test_csv_and_folder_sources(tmp_path):
    csv_path = make_csv(tmp_path / "csv", rows=6)
    source = build_source(_args(dataset_type="csv", train_data=str(csv_path)), 32, 16)
    (batch,) = _take(source, 1, batch=6)
    assert batch["images"].shape == (6, 3, 32, 32) and (batch["labels"] == -1).all()
    root = make_image_folder(tmp_path / "folder", per_class=2, classes=3)
    (root / "car" / "broken.png").write_bytes(b"\x89PNG garbage")
    source = build_source(_args(dataset_type="folder", train_data=str(root), augment=False), 32, 16)
    assert source.classnames == ["apple", "boat", "car"] and source.num_samples == 7
    batch, second = _take(source, 2, batch=6)  # 7 files, one broken: one epoch is exactly one batch
    assert sorted(batch["labels"].tolist()) == [0, 0, 1, 1, 2, 2]
    assert int(batch["skipped"]) + int(second["skipped"]) >= 1
    from clipag.tokenizer import tokenize

    assert torch.equal(batch["tokens"][batch["labels"] == 1][0], tokenize("a photo of a boat.", 16)[0])


def test_more_workers_than_shards_lowers_the_workers_and_says_so(tmp_path, caplog):
    from clipag.finetune.data import fit_workers

    urls = make_shards(tmp_path / "shards", shards=2, per_shard=3)
    source = build_source(_args(dataset_type="webdataset", train_data=urls), 32, 16)
    with caplog.at_level(logging.WARNING, logger="clipag.finetune"):
        assert fit_workers(source, world_size=1, workers=4) == 2
    assert "2 shards cannot feed 1 rank(s) × 4 workers" in caplog.text and "using 2 worker(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipag.finetune"):
        assert fit_workers(source, world_size=1, workers=2) == 2  # enough shards: unchanged, nothing logged
        assert fit_workers(source, world_size=1, workers=0) == 0  # loading in the main process: one slot
        resampled = build_source(_args(dataset_type="webdataset", train_data=urls, dataset_resampled=True), 32, 16)
        assert fit_workers(resampled, world_size=8, workers=4) == 4  # drawn with replacement: no limit
        assert fit_workers(build_source(_args(), 32, 16), world_size=8, workers=4) == 4  # indexed sources
    assert not caplog.text
    (batch,) = _take(source, 1, batch=3, workers=2)  # the lowered count feeds a loader
    assert batch["images"].shape == (3, 3, 32, 32)


def test_fewer_shards_than_ranks_is_still_a_clear_error(tmp_path):
    from clipag.finetune.data import fit_workers

    urls = make_shards(tmp_path / "shards", shards=2, per_shard=3)
    source = build_source(_args(dataset_type="webdataset", train_data=urls), 32, 16)
    assert fit_workers(source, world_size=2, workers=4) == 1  # one shard per rank still works
    for workers in (0, 4):
        with pytest.raises(ValueError, match="2 shards cannot feed 4 ranks.*--dataset-resampled"):
            fit_workers(source, world_size=4, workers=workers)


def test_a_corrupt_tar_header_mid_shard_is_skipped_counted_and_named(tmp_path, caplog):
    """Python's tarfile reads a bad header as the end of the archive: samples 5-7 used to vanish unreported."""
    from clipag.finetune.synthetic import SyntheticImages
    from clipag.tokenizer import tokenize

    urls = make_shards(tmp_path / "shards", shards=1, per_shard=8)
    shard = tmp_path / "shards" / "00000.tar"
    break_header(shard, "000000004.jpg")
    source = build_source(_args(dataset_type="webdataset", train_data=urls, augment=False), 32, 16)
    with caplog.at_level(logging.WARNING, logger="clipag.data"):
        (batch,) = _take(source, 1, batch=7)  # 8 records, sample 4 lost its image: epoch 0 is exactly 7 items
    assert int(batch["skipped"]) == 2  # the damaged stretch, and sample 4's caption left without its image
    damaged = [r.getMessage() for r in caplog.records if "damaged webdataset shard" in r.getMessage()]
    assert len(damaged) == 1 and str(shard) in damaged[0] and "bad tar header at byte" in damaged[0]
    images = SyntheticImages(4, 32)  # make_shards captions sample i "<its synthetic caption> number i"
    expected = {tuple(tokenize([f"{images.item(i)[1]} number {i}"], 16)[0].tolist()) for i in (0, 1, 2, 3, 5, 6, 7)}
    assert {tuple(t.tolist()) for t in batch["tokens"]} == expected  # everything after the bad header was read


def test_a_shard_cut_at_a_member_boundary_is_reported(tmp_path, caplog):
    """A shard that ends cleanly between members (no end-of-archive marker) used to read as complete."""
    import tarfile

    urls = make_shards(tmp_path / "shards", shards=1, per_shard=8)
    shard = tmp_path / "shards" / "00000.tar"
    with tarfile.open(shard) as tar:
        cut = tar.getmember("000000004.jpg").offset
    shard.write_bytes(shard.read_bytes()[:cut])
    source = build_source(_args(dataset_type="webdataset", train_data=urls), 32, 16)
    with caplog.at_level(logging.WARNING, logger="clipag.data"):
        (batch,) = _take(source, 1, batch=4)
    assert int(batch["skipped"]) == 1
    assert f"{shard}: no end-of-archive marker after byte {cut}" in caplog.text
