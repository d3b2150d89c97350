"""CLIPAG in the Hugging Face ecosystem.

- :mod:`.convert`: open_clip/OpenAI CLIP weights and configs <-> transformers ``CLIPModel``, both directions, exact
  (pure torch: reading a transformers-format CLIP needs no transformers install).
- :mod:`.read`: ``clipag.load`` of transformers-format folders and ``hf-hub:`` repos, converted once into the cache.
- :mod:`.export`: ``clipag export NAME OUT --format transformers|open_clip [--push-to-hub REPO]``.
- :mod:`.measure`: the equivalence figures every export measures and its model card states.
- :mod:`.card`: the model card.
- :mod:`.run_hooks`: ``clipag run`` for scripts that call transformers' ``from_pretrained``.
- :mod:`.cli`: the ``export`` sub-command (torch-free until it runs).
"""

__all__: list[str] = []
