"""A transformers CLIP script written with the Auto classes and pipeline(), with no clipag in it.

    python transformers_auto_calls.py MODEL_ID PHOTO OTHER_ID OUT.json

tests/hf/test_hf_run.py runs it through `clipag run --device cpu` and checks what it wrote against clipag.
OTHER_ID is a model that is not a CLIP: AutoConfig must load it unchanged.
"""

import json
import sys

import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer, pipeline

model_id, photo, other_id, out = sys.argv[1:5]
labels = ["a cat", "a dog"]
image = Image.open(photo)

processor = AutoProcessor.from_pretrained(model_id)
tokenizer = AutoTokenizer.from_pretrained(model_id)
image_processor = AutoImageProcessor.from_pretrained(model_id)
pixel_values = image_processor(image, return_tensors="pt")["pixel_values"]
classify = pipeline("zero-shot-image-classification", model=model_id)
scores = {r["label"]: r["score"] for r in classify(image, candidate_labels=labels)}
json.dump({"processor_class": type(processor).__name__,
           "processor_pixels_equal": torch.equal(processor(images=image, return_tensors="pt")["pixel_values"],
                                                 pixel_values),
           "input_ids": tokenizer(labels, padding=True)["input_ids"],
           "pixel_values": pixel_values.tolist(),
           "pipeline_model_class": type(classify.model).__name__,
           "scores": [scores[label] for label in labels],
           "other_model_type": AutoConfig.from_pretrained(other_id).model_type}, open(out, "w"))
