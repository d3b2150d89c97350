"""Drive old_cog_predictor.py as a cog server would: setup(), then predict() with some inputs left out."""

import json
import sys

import old_cog_predictor

predictor = old_cog_predictor.Predictor()
predictor.setup()
outputs = list(predictor.predict(steps="2"))  # the old server handed inputs over as text
try:
    list(predictor.predict(mode="medium"))
    refused = None
except ValueError as error:
    refused = str(error)
print(json.dumps({"cog": sys.modules["cog"].__name__, "outputs": [[str(p), d] for p, d in outputs],
                  "refused": refused}))
