"""The labelled comparison grid every CLI draws (one home: clipag.images.labelled_grid)."""

from __future__ import annotations

import pytest
from PIL import Image

from clipag.images import labelled_grid


def test_labelled_grid_places_groups_with_a_gap():
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    grid = labelled_grid([[red, red, blue, blue], [blue, blue, red, red]], ["a red ring", "b"], ["CLIP", "CLIPAG"],
                         group_size=2, cell_size=32, gap=12, label_width=100)
    assert grid.size == (100 + 4 * 32 + 12, 20 + 2 * 32)
    assert grid.getpixel((100 + 5, 20 + 5)) == (255, 0, 0)            # row 0, CLIP group
    assert grid.getpixel((100 + 64 + 12 + 5, 20 + 5)) == (0, 0, 255)  # row 0, CLIPAG group, after the gap
    assert grid.getpixel((100 + 64 + 2, 30)) == (255, 255, 255)       # the gap itself
    assert grid.getpixel((100 + 5, 20 + 32 + 5)) == (0, 0, 255)       # row 1


def test_labelled_grid_rejects_ragged_rows():
    image = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="same number"):
        labelled_grid([[image, image], [image]])
    with pytest.raises(ValueError, match="groups of 2"):
        labelled_grid([[image, image, image]], group_size=2)


def test_normalization_of_reads_the_models_preprocess():
    from clipag.model import make_preprocess, normalization_of

    assert normalization_of(make_preprocess(32, {"mean": (0.5,) * 3, "std": (0.25,) * 3})) == ((0.5,) * 3, (0.25,) * 3)
    assert normalization_of(make_preprocess(32))[0] == (0.48145466, 0.4578275, 0.40821073)
    with pytest.raises(ValueError, match="no Normalize"):
        normalization_of(lambda image: image)
