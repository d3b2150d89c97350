"""CLIPAG's official loading code (its README and notebooks): open_clip builds the model and reads the file.

Usage: open_clip_official_load.py MODEL_NAME CHECKPOINT OUT.pt [EXTRA_CONFIG_DIR]. The last argument registers a
tiny test architecture with open_clip; the real call needs none. Writes the features of fixed inputs to OUT.pt.
"""

import sys

import open_clip
import torch

model_name, checkpoint, out = sys.argv[1:4]
if len(sys.argv) > 4:
    open_clip.add_model_config(sys.argv[4])
model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint)
model.eval()
torch.manual_seed(0)
size = model.visual.image_size
size = size[0] if isinstance(size, tuple | list) else size
image = torch.rand(2, 3, size, size)
text = open_clip.tokenize(["a photo of a cat", "a diagram"])
with torch.no_grad():
    torch.save({"image": model.encode_image(image), "text": model.encode_text(text)}, out)
print("features written")
