"""A transformers CLIP script as people write them, with no clipag in it: the typical from_pretrained calls, a
processor call on text and an image, features, logits and gradients through pixel_values, hard-coded CUDA.

    python transformers_clip_calls.py MODEL_ID PHOTO OUT.json [SD_REPO]

tests/hf/test_hf_run.py runs it through `clipag run --device cpu` and checks what it wrote against clipag.
"""

import json
import sys

import torch
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)


def tensor(output):  # transformers 5 returns an output object from get_*_features, 4 a tensor
    return output if torch.is_tensor(output) else output.pooler_output


model_id, photo, out = sys.argv[1:4]
texts = ["a photo of a cat", "a photo of a dog"]
device = "cuda"  # as many scripts have it

model = CLIPModel.from_pretrained(model_id).to(device).eval()
processor = CLIPProcessor.from_pretrained(model_id)
image = Image.open(photo)
inputs = processor(text=texts, images=image, return_tensors="pt", padding=True)
inputs = {k: v.to(device) for k, v in inputs.items()}

pixel_values = inputs["pixel_values"].clone().requires_grad_(True)
image_output = model.get_image_features(pixel_values=pixel_values)
image_features = tensor(image_output)
with torch.no_grad():
    text_features = tensor(model.get_text_features(input_ids=inputs["input_ids"],
                                                   attention_mask=inputs["attention_mask"]))
similarity = torch.nn.functional.cosine_similarity(image_features, text_features[:1]).sum()
similarity.backward()
with torch.no_grad():
    logits = model(**inputs).logits_per_image

vision = CLIPVisionModelWithProjection.from_pretrained(model_id).to(device).eval()
text_model = CLIPTextModelWithProjection.from_pretrained(model_id).to(device).eval()
plain_vision = CLIPVisionModel.from_pretrained(model_id).eval()
tokenizer = CLIPTokenizer.from_pretrained(model_id)
image_processor = CLIPImageProcessor.from_pretrained(model_id)
with torch.no_grad():
    image_embeds = vision(pixel_values=inputs["pixel_values"]).image_embeds
    tokens = tokenizer(texts, padding=True, return_tensors="pt").to(device)
    text_embeds = text_model(**tokens).text_embeds
    pooled = plain_vision(pixel_values=inputs["pixel_values"].cpu()).pooler_output

result = {
    "model_class": type(model).__name__, "config_hidden_act": model.config.vision_config.hidden_act,
    "device": str(next(model.parameters()).device), "image_output_type": type(image_output).__name__,
    "pixel_values": inputs["pixel_values"].tolist(), "input_ids": inputs["input_ids"].tolist(),
    "image_features": image_features.tolist(), "text_features": text_features.tolist(),
    "grad_norm": float(pixel_values.grad.norm()), "pixel_grad": pixel_values.grad.tolist(),
    "logits": logits.tolist(), "image_embeds": image_embeds.tolist(), "text_embeds": text_embeds.tolist(),
    "pooled_shape": list(pooled.shape),
    "image_processor_pixels": image_processor(images=image, return_tensors="pt")["pixel_values"].tolist(),
}
if len(sys.argv) > 4:  # a Stable Diffusion repo's text encoder: a subfolder load, never swapped
    text_encoder = CLIPTextModel.from_pretrained(sys.argv[4], subfolder="text_encoder")
    result["sd_text_encoder_layers"] = text_encoder.config.num_hidden_layers
with open(out, "w") as f:
    json.dump(result, f)
