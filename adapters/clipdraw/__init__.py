"""CLIPDraw with CLIPAG, and a pure-PyTorch stand-in for diffvg (``pydiffvg``)."""
