"""A predictor in cog's pre-0.1 style (as kvfrans/clipdraw's predict.py is written), written here for the tests."""

import cog
import torch


class Predictor(cog.Predictor):
    def setup(self):
        self.device = torch.device("cuda")

    @cog.input("prompt", type=str, default="a drawing of a cat", help="what to draw")
    @cog.input("steps", type=int, default=3, min=1, help="how many steps")
    @cog.input("mode", type=str, default="fast", options=["fast", "slow"])
    def predict(self, prompt, steps, mode):
        for step in range(steps):
            yield cog.Path(f"{prompt}-{mode}-{step}.png"), str(torch.zeros(1, device=self.device).device)
