"""``python -m clipag.demo``: a small synthetic reproduction of CLIPAG's claim (see ``pipeline.py``)."""
