"""Pickles never execute; truncated or corrupt files are detected and named."""

import io
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import clipag
from clipag.checkpoints import CheckpointError, read_checkpoint


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_torch_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}, "hook": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to unpickle"):
        clipag.load(str(path), device="cpu")
    assert not marker.exists()


def test_malicious_torchscript_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_ts.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil_ts/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
        archive.writestr("evil_ts/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("evil_ts/version", "3")
    with pytest.raises(CheckpointError, match=r"evil_ts\.pt: refused to read TorchScript archive"):
        read_checkpoint(path)
    assert not marker.exists()


def test_truncated_safetensors_names_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.randn(1000, 100)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: truncated or corrupt safetensors"):
        clipag.load(str(path), device="cpu")


def test_truncated_torch_zip_names_file(tmp_path):
    path = tmp_path / "model.pt"
    buffer = io.BytesIO()
    torch.save({"w": torch.randn(1000, 100)}, buffer)
    path.write_bytes(buffer.getvalue()[:-2000])
    with pytest.raises(CheckpointError, match=r"model\.pt: truncated or corrupt"):
        clipag.load(str(path), device="cpu")


def test_empty_and_foreign_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt: file is empty"):
        read_checkpoint(tmp_path / "empty.pt")
    torch.save({"not": "weights"}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match="dict.pt: not a CLIP checkpoint"):
        read_checkpoint(tmp_path / "dict.pt")


def test_wrong_architecture_names_keys(tmp_path, openai_reference):
    state_dict = dict(openai_reference.state_dict())
    state_dict["visual.extra"] = torch.zeros(1)
    torch.save(state_dict, tmp_path / "extra.pt")
    with pytest.raises(RuntimeError, match=r"extra\.pt: weights do not fit .*unexpected: \['visual.extra'\]"):
        clipag.load(str(tmp_path / "extra.pt"), device="cpu")


def test_local_pickle_is_converted_once(openai_files, monkeypatch):
    first, _ = clipag.load(str(openai_files["state_dict"]), device="cpu")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the pickle was read again")

    monkeypatch.setattr(torch, "load", no_unpickling)
    second, _ = clipag.load(str(openai_files["torchscript"]), device="cpu")  # first read: restricted reader
    third, _ = clipag.load(str(openai_files["state_dict"]), device="cpu")  # from the converted cache
    for key, value in first.state_dict().items():
        assert torch.equal(third.state_dict()[key], value) and torch.equal(second.state_dict()[key], value)
