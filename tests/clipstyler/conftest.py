"""Fixtures shared by the CLIPStyler tests: one thread, a random VGG19 in a torch hub cache, tiny CLIPs, a photo."""

from __future__ import annotations

import pytest
from clipstyler_fixtures import content_image, write_random_vgg19
from generate_fixtures import one_thread, save_hub_folder


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("torch_home")
    write_random_vgg19(home)
    return home


@pytest.fixture
def vgg_cache(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    return {"a": save_hub_folder(root / "tiny32", size=32), "b": save_hub_folder(root / "tiny32b", size=32, seed=1)}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return content_image(tmp_path_factory.mktemp("photo") / "photo.png")
