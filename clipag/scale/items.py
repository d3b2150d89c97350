"""Prompt files: what ``--prompts FILE`` asks for, as a list of items, each with a stable key and file name.

* ``.txt``: one prompt a line (blank lines and lines starting with ``#`` are skipped);
* ``.jsonl``: one JSON object a line: ``prompt`` (``text`` for ``style``), optional ``seed``, ``name`` (the output
  file's stem), ``content`` (``style``: the content image) and any field of the command's config (``steps``,
  ``lr``, ``size``...), which overrides the command line's value for that item.

Every line gives ``count`` items (the command's ``-n``/``--count``), seeds ``seed, seed+1, ...`` from the line's
``seed`` or the command's ``--seed``. For ``style`` the lines are style texts, crossed with the content images
(a file, a folder of images, or a ``.txt`` list of image paths). An item's key hashes what makes it (command,
prompt, seed, content image bytes, its own settings), so it names the same output in every run, whatever the
order of the lines; the same item listed twice is made once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Item", "read_items", "content_images", "IMAGE_SUFFIXES", "ItemError"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_NON_SETTINGS = {"prompt", "text", "seed", "name", "content"}


class ItemError(ValueError):
    """A prompt file (or content list) that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Item:
    prompt: str
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)  # config fields this item overrides
    content: str | None = None  # style: the content image
    content_sha256: str | None = None
    name: str | None = None  # the output file's stem, if the line gave one
    where: str = ""  # FILE:LINE, for messages
    index: int = 0  # position in the prompt file's items: the merged manifest's order (not part of the key)

    def key(self, command: str) -> str:
        identity = {"command": command, "prompt": self.prompt, "seed": self.seed, "settings": self.settings,
                    "content_sha256": self.content_sha256}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    def stem(self, command: str) -> str:
        if self.name:
            return self.name
        text = _slug(self.prompt, 40)
        if self.content:
            text = f"{_slug(Path(self.content).stem, 24)}-{text}"
        return f"{text}-s{self.seed}-{self.key(command)[:8]}"

    def settings_key(self) -> str:
        return json.dumps(self.settings, sort_keys=True, default=str)


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "item"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content_images(source: str | Path) -> list[Path]:
    """``style``'s content images: one image file, every image in a folder (sorted), or a ``.txt`` list of paths
    (relative to the list's folder)."""
    path = Path(source)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise ItemError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return images
    if path.suffix.lower() == ".txt" and path.is_file():
        images = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                image = (path.parent / line.strip()).resolve()
                if not image.is_file():
                    raise ItemError(f"{path}:{number}: content image {line.strip()} not found")
                images.append(image)
        if not images:
            raise ItemError(f"{path}: lists no content images")
        return images
    if not path.is_file():
        raise ItemError(f"content image {path} not found")
    return [path]


def _coerce(settings: dict[str, Any], defaults: Any, where: str) -> dict[str, Any]:
    """JSON values as the config's types (lists become tuples where the field is a tuple); unknown keys refused."""
    fields = {f.name: f for f in dataclasses.fields(defaults)}
    out = {}
    for key, value in settings.items():
        if key not in fields:
            known = sorted(_NON_SETTINGS | set(fields))
            raise ItemError(f"{where}: unknown key {key!r}; an item may give {', '.join(known)}")
        default = getattr(defaults, key)
        out[key] = tuple(value) if isinstance(value, list) and (isinstance(default, tuple) or default is None) \
            else value
    return out


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ItemError(f"--prompts {path}: cannot read it as UTF-8 text ({e})") from e
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield number, line


def read_items(path: str | Path, command: str, *, seed: int = 0, count: int = 1, defaults: Any,
               contents: list[Path] | None = None) -> list[Item]:
    """The items of a prompt file, in file order, each listed once. ``defaults``: the command's config, whose
    fields a ``.jsonl`` line may set (each override is checked by ``validate()`` on a copy, now, not mid-run)."""
    path = Path(path)
    if not path.is_file():
        raise ItemError(f"--prompts {path}: no such file")
    if path.suffix.lower() not in (".txt", ".jsonl"):
        raise ItemError(f"--prompts {path}: give a .txt file (one prompt a line) or a .jsonl file (one JSON object "
                        "a line)")
    if count < 1:
        raise ItemError(f"the number of images per prompt must be >= 1, got {count}")
    text_key = "text" if command == "style" else "prompt"
    hashes: dict[str, str] = {}

    def content_hash(image: Path) -> str:
        if str(image) not in hashes:
            hashes[str(image)] = _sha256(image)
        return hashes[str(image)]

    items: dict[str, Item] = {}
    for number, line in _lines(path):
        where = f"{path}:{number}"
        if path.suffix.lower() == ".txt":
            record: dict[str, Any] = {text_key: line.strip()}
        else:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ItemError(f"{where}: not a JSON object ({e.msg}); .jsonl wants one object a line, e.g. "
                                '{"prompt": "a red apple", "seed": 3, "steps": 50}') from e
            if not isinstance(record, dict):
                raise ItemError(f"{where}: expected a JSON object, got {type(record).__name__}")
        prompt = record.get(text_key, record.get("prompt") if command == "style" else None)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ItemError(f"{where}: no {text_key!r} (a non-empty string)")
        base_seed = record.get("seed", seed)
        if isinstance(base_seed, bool) or not isinstance(base_seed, int):
            raise ItemError(f"{where}: seed must be an integer, got {base_seed!r}")
        name = record.get("name")
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name) or count > 1):
            raise ItemError(f"{where}: name must be a plain file stem (letters, digits, . _ -) and needs -n 1, "
                            f"got {name!r}")
        settings = _coerce({k: v for k, v in record.items() if k not in _NON_SETTINGS}, defaults, where)
        try:
            dataclasses.replace(defaults, **settings).validate()
        except (ValueError, TypeError) as e:
            raise ItemError(f"{where}: {e}") from e
        if command == "style":
            images = [Path(record["content"])] if "content" in record else (contents or [])
            if "content" in record and not images[0].is_absolute():
                images = [path.parent / images[0]]
            if not images:
                raise ItemError(f"{where}: no content image (give CONTENT on the command line or \"content\" here)")
            for image in images:
                if not image.is_file():
                    raise ItemError(f"{where}: content image {image} not found")
        else:
            images = [None]
        for image in images:
            for k in range(count):
                item = Item(prompt.strip(), base_seed + k, settings, str(image) if image else None,
                            content_hash(image) if image else None, name, where)
                items.setdefault(item.key(command), item)
    if not items:
        raise ItemError(f"--prompts {path}: no prompts in it")
    stems: dict[str, str] = {}
    for item in items.values():
        stem = item.stem(command)
        if stem in stems:
            raise ItemError(f"{item.where}: name {stem!r} is also used by {stems[stem]}")
        stems[stem] = item.where
    return [dataclasses.replace(item, index=i) for i, item in enumerate(items.values())]
