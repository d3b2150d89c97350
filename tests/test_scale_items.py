"""Prompt files (``--prompts FILE``): .txt and .jsonl, per-item settings, stable keys and names, clear errors."""

from __future__ import annotations

import json

import pytest
from clipag.adapters.clipstyler.styler import StyleConfig
from PIL import Image

from clipag.generation import GenerateConfig
from clipag.scale.items import ItemError, content_images, read_items


def write(path, lines):
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


def test_txt_lines_seeds_and_counts(tmp_path):
    file = write(tmp_path / "p.txt", ["a red apple", "", "# a comment", "  a blue car  "])
    items = read_items(file, "generate", seed=7, count=2, defaults=GenerateConfig())
    assert [(i.prompt, i.seed) for i in items] == [("a red apple", 7), ("a red apple", 8), ("a blue car", 7),
                                                   ("a blue car", 8)]
    assert all(i.settings == {} for i in items)
    assert items[0].stem("generate").startswith("a-red-apple-s7-") and items[0].where == f"{file}:1"


def test_keys_do_not_depend_on_line_order_and_duplicates_are_made_once(tmp_path):
    a = read_items(write(tmp_path / "a.txt", ["x", "y", "x"]), "generate", defaults=GenerateConfig())
    b = read_items(write(tmp_path / "b.txt", ["y", "x"]), "generate", defaults=GenerateConfig())
    assert len(a) == 2 and {i.key("generate") for i in a} == {i.key("generate") for i in b}
    assert {i.stem("generate") for i in a} == {i.stem("generate") for i in b}
    assert a[0].key("generate") != a[0].key("draw")  # the command is part of what an item is


def test_jsonl_seed_settings_and_name(tmp_path):
    file = write(tmp_path / "p.jsonl", [{"prompt": "a red apple", "seed": 3, "steps": 5, "saturation": [0, 1]},
                                        {"prompt": "a blue car", "name": "car"}])
    first, second = read_items(file, "generate", seed=0, defaults=GenerateConfig())
    assert (first.seed, first.settings) == (3, {"steps": 5, "saturation": (0, 1)})  # lists become the field's tuple
    assert second.stem("generate") == "car" and second.seed == 0
    same_prompt_other_steps = read_items(write(tmp_path / "q.jsonl", [{"prompt": "a red apple", "seed": 3}]),
                                         "generate", defaults=GenerateConfig())[0]
    assert same_prompt_other_steps.key("generate") != first.key("generate")


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "stpes": 5}', r"p.jsonl:1: unknown key 'stpes'; an item may give .*steps"),
    ('{"prompt": "x", "steps": -1}', r"p.jsonl:1: steps, global_views and patch_views must be >= 0"),
    ('{"prompt": "x", "seed": "3"}', r"p.jsonl:1: seed must be an integer"),
    ('{"prompt": ""}', r"p.jsonl:1: no 'prompt'"),
    ('["x"]', r"p.jsonl:1: expected a JSON object"),
    ('{"prompt": "x",}', r"p.jsonl:1: not a JSON object"),
    ('{"prompt": "x", "name": "../up"}', r"name must be a plain file stem"),
])
def test_bad_lines_are_named(tmp_path, line, message):
    (tmp_path / "p.jsonl").write_text(line + "\n")
    with pytest.raises(ItemError, match=message):
        read_items(tmp_path / "p.jsonl", "generate", defaults=GenerateConfig())


def test_bad_files(tmp_path):
    with pytest.raises(ItemError, match="no such file"):
        read_items(tmp_path / "missing.txt", "generate", defaults=GenerateConfig())
    (tmp_path / "p.csv").write_text("x\n")
    with pytest.raises(ItemError, match=r"give a \.txt file"):
        read_items(tmp_path / "p.csv", "generate", defaults=GenerateConfig())
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ItemError, match="no prompts in it"):
        read_items(tmp_path / "empty.txt", "generate", defaults=GenerateConfig())
    (tmp_path / "two.jsonl").write_text('{"prompt": "x", "name": "same"}\n{"prompt": "y", "name": "same"}\n')
    with pytest.raises(ItemError, match=r"two.jsonl:2: name 'same' is also used by .*two.jsonl:1"):
        read_items(tmp_path / "two.jsonl", "generate", defaults=GenerateConfig())


def test_style_crosses_content_images_with_texts(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, colour in (("b.png", "red"), ("a.jpg", "blue")):
        Image.new("RGB", (16, 16), colour).save(photos / name)
    (photos / "notes.md").write_text("not an image")
    images = content_images(photos)
    assert [p.name for p in images] == ["a.jpg", "b.png"]
    texts = write(tmp_path / "styles.jsonl", [{"text": "an oil painting"}, {"text": "fire", "content": "photos/b.png"}])
    items = read_items(texts, "style", defaults=StyleConfig(), contents=images)
    assert [(i.prompt, i.content.split("/")[-1]) for i in items] == [("an oil painting", "a.jpg"),
                                                                      ("an oil painting", "b.png"), ("fire", "b.png")]
    assert items[1].content_sha256 == items[2].content_sha256 != items[0].content_sha256
    assert items[0].stem("style").startswith("a-an-oil-painting-s0-")
    listing = tmp_path / "list.txt"
    listing.write_text("photos/b.png\n")
    assert content_images(listing) == [(photos / "b.png").resolve()]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ItemError, match="no images"):
        content_images(tmp_path / "empty")
