"""clipag.images: the labelled grid."""

import pytest
from PIL import Image

from clipag.images import make_grid


def test_grid_row_labels_sit_left_of_their_rows():
    tiles = [Image.new("RGB", (20, 20), colour) for colour in ("red", "green", "blue", "black")]
    plain = make_grid(tiles, columns=2)
    labelled = make_grid(tiles, columns=2, row_labels=["a red apple", "a blue boat"])
    assert labelled.height == plain.height and labelled.width > plain.width
    left = labelled.width - plain.width
    assert labelled.crop((left, 0, labelled.width, labelled.height)).tobytes() == plain.tobytes()
    for row in range(2):  # some dark text in each row's label strip
        strip = labelled.crop((0, 2 + row * 22, left, 2 + row * 22 + 20)).convert("L")
        assert strip.getextrema()[0] < 128
    with pytest.raises(ValueError, match="3 row labels for 2 rows"):
        make_grid(tiles, columns=2, row_labels=["a", "b", "c"])
