"""cog's pre-0.1 predictor API as a stand-in: what kvfrans/clipdraw's predict.py needs to import and run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import clipag.adapters.cog as cog
import pytest

DRIVER = Path(__file__).parent / "scripts" / "cog_driver"


class Echo(cog.Predictor):
    @cog.input("prompt", type=str, default="a cat")
    @cog.input("n", type=int, default=2, min=1, max=4)
    @cog.input("mode", type=str, options=["a", "b"])
    def predict(self, prompt, n, mode):
        return prompt, n, mode


def test_inputs_take_defaults_and_are_checked():
    echo = Echo()
    echo.setup()
    assert echo.predict(mode="a") == ("a cat", 2, "a")
    assert echo.predict("a dog", "3", mode="b") == ("a dog", 3, "b")  # text converted to the declared type
    assert list(echo.predict.cog_inputs) == ["prompt", "n", "mode"]
    with pytest.raises(TypeError, match="missing the input 'mode'"):
        echo.predict()
    with pytest.raises(ValueError, match=r"'mode' must be one of \['a', 'b'\]"):
        echo.predict(mode="c")
    with pytest.raises(ValueError, match="'n' must be <= 4"):
        echo.predict(mode="a", n=5)
    with pytest.raises(TypeError, match="takes 3 inputs, 4 given"):
        echo.predict("x", 1, "a", "extra")


def test_an_input_the_method_does_not_take_is_refused():
    with pytest.raises(TypeError, match="has no parameter 'steps'"):
        @cog.input("steps", type=int, default=1)
        def predict(self, prompt):
            return prompt


def test_old_cog_script_runs_under_clipag_run(tmp_path):
    """A driver imports an old-API predictor module (as one drives predict.py), hard-coded CUDA, no cog."""
    result = subprocess.run([sys.executable, "-m", "clipag.cli", "run", "--device", "cpu", str(DRIVER / "drive.py")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "import cog -> clipag.adapters.cog (stand-in)" in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["cog"] == "clipag.adapters.cog"
    assert report["outputs"] == [["a drawing of a cat-fast-0.png", "cpu"], ["a drawing of a cat-fast-1.png", "cpu"]]
    assert "must be one of ['fast', 'slow']" in report["refused"]
