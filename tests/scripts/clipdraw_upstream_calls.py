"""The clip/pydiffvg call sequence of kvfrans/clipdraw's predict.py and the CLIPAG notebook's curve-optimizer
cell, written here (not copied) to run under ``clipag run --device cpu``: hard-coded CUDA, diffvg absent.

Usage: python clipdraw_upstream_calls.py OUT_DIR NUM_PATHS NUM_ITER; writes OUT_DIR/report.json.
"""

import json
import random
import sys

import clip
import pydiffvg
import torch
import torchvision.transforms as transforms

out, num_paths, num_iter = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(0)
torch.manual_seed(0)
device = torch.device("cuda")
model, _ = clip.load("ViT-B/32", device, jit=False)
with torch.no_grad():
    text_features = model.encode_text(clip.tokenize("A drawing of a cat.").to(device))
    negative = model.encode_text(clip.tokenize("A badly drawn sketch.").to(device))
torch.cuda.empty_cache()

pydiffvg.set_print_timing(False)
pydiffvg.set_use_gpu(torch.cuda.is_available())
pydiffvg.set_device(device)
size = 224
augment = transforms.Compose([
    transforms.RandomPerspective(fill=1, p=1, distortion_scale=0.5),
    transforms.RandomResizedCrop(224, scale=(0.7, 0.9)),
    transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
])

shapes, groups = [], []
for _ in range(num_paths):
    segments = random.randint(1, 3)
    xy = [(random.random(), random.random())]
    for _ in range(3 * segments):
        xy.append((xy[-1][0] + 0.1 * (random.random() - 0.5), xy[-1][1] + 0.1 * (random.random() - 0.5)))
    points = torch.tensor(xy) * size
    shapes.append(pydiffvg.Path(num_control_points=torch.zeros(segments, dtype=torch.int32) + 2, points=points,
                                stroke_width=torch.tensor(1.0), is_closed=False))
    groups.append(pydiffvg.ShapeGroup(shape_ids=torch.tensor([len(shapes) - 1]), fill_color=None,
                                      stroke_color=torch.tensor([random.random() for _ in range(4)])))

render = pydiffvg.RenderFunction.apply
first = render(size, size, 2, 2, 0, None, *pydiffvg.RenderFunction.serialize_scene(size, size, shapes, groups))
start = [p.points.clone() for p in shapes]
for path in shapes:  # parameters become leaves only after the first render, as upstream does it
    path.points.requires_grad = True
    path.stroke_width.requires_grad = True
for group in groups:
    group.stroke_color.requires_grad = True
points_optim = torch.optim.Adam([p.points for p in shapes], lr=1.0)
width_optim = torch.optim.Adam([p.stroke_width for p in shapes], lr=0.1)
color_optim = torch.optim.Adam([g.stroke_color for g in groups], lr=0.01)

losses, grad_norms = [], []
for t in range(num_iter):
    for optim in (points_optim, width_optim, color_optim):
        optim.zero_grad()
    scene_args = pydiffvg.RenderFunction.serialize_scene(size, size, shapes, groups)
    img = render(size, size, 2, 2, t, None, *scene_args)
    img = img[:, :, 3:4] * img[:, :, :3] + torch.ones(img.shape[0], img.shape[1], 3,
                                                      device=pydiffvg.get_device()) * (1 - img[:, :, 3:4])
    pydiffvg.imwrite(img.cpu(), f"{out}/iter_{t}.png", gamma=1.0)  # the notebook's call, on a tensor with grad
    img = img[:, :, :3].unsqueeze(0).permute(0, 3, 1, 2)
    features = model.encode_image(torch.cat([augment(img) for _ in range(4)]))
    loss = 0
    for n in range(4):
        loss -= torch.cosine_similarity(text_features, features[n:n + 1], dim=1)
        loss += torch.cosine_similarity(negative, features[n:n + 1], dim=1) * 0.3
    loss.backward()
    grad_norms.append(float(sum(p.points.grad.norm() for p in shapes)))
    for optim in (points_optim, width_optim, color_optim):
        optim.step()
    for path in shapes:
        path.stroke_width.data.clamp_(1.0, 50)
    for group in groups:
        group.stroke_color.data.clamp_(0.0, 1.0)
    losses.append(float(loss))
pydiffvg.save_svg(f"{out}/final.svg", size, size, shapes, groups)
json.dump({"module": pydiffvg.__name__, "device": str(pydiffvg.get_device()), "image_device": str(first.device),
           "shape": list(first.shape), "losses": losses, "grad_norms": grad_norms,
           "moved": max(float((p.points.detach() - s).abs().max()) for p, s in zip(shapes, start, strict=True)),
           "min_width": min(float(p.stroke_width) for p in shapes),
           "colors_in_range": all(bool(((g.stroke_color >= 0) & (g.stroke_color <= 1)).all()) for g in groups)},
          open(f"{out}/report.json", "w"))
