"""A script written here that makes the imports and calls nerdyrodent/VQGAN-CLIP's generate.py makes.

It is not upstream's code: tests run it through ``clipag run --device cpu`` to prove that the stand-in taming,
the clip alias, the CUDA remap and today's omegaconf / torch-optimizer / kornia / imageio serve those calls.
"""

import argparse
import json
import sys

sys.path.append("taming-transformers")  # as generate.py does

import imageio  # noqa: E402
import kornia.augmentation as K  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from CLIP import clip  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from taming.models import cond_transformer, vqgan  # noqa: E402
from torch import nn, optim  # noqa: E402
from torch.cuda import get_device_properties  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch_optimizer import AdamP, DiffGrad  # noqa: E402
from torchvision import transforms  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("-conf", required=True)
parser.add_argument("-ckpt", required=True)
parser.add_argument("-o", required=True)
parser.add_argument("-s", type=int, default=32)
args = parser.parse_args()

low_vram = torch.cuda.is_available() and get_device_properties(0).total_memory <= 2 ** 33
device = torch.device("cuda:0")  # hard-coded CUDA; clipag run --device cpu sends it to the CPU

config = OmegaConf.load(args.conf)
target = config.model.target
if target == "taming.models.cond_transformer.Net2NetTransformer":
    parent = cond_transformer.Net2NetTransformer(**config.model.params)
    parent.eval().requires_grad_(False)
    parent.init_from_ckpt(args.ckpt)
    model = parent.first_stage_model
else:
    model = getattr(vqgan, target.rsplit(".", 1)[1])(**config.model.params)
    model.eval().requires_grad_(False)
    model.init_from_ckpt(args.ckpt)
del model.loss
model = model.to(device)
gumbel = target.endswith("GumbelVQ")

perceptor = clip.load("ViT-B/32", jit=False)[0].eval().requires_grad_(False).to(device)
cut_size = perceptor.visual.input_resolution
f = 2 ** (model.decoder.num_resolutions - 1)
codebook = model.quantize.embed.weight if gumbel else model.quantize.embedding.weight
n_toks = model.quantize.n_embed if gumbel else model.quantize.n_e
e_dim = codebook.shape[1] if gumbel else model.quantize.e_dim
z_min = codebook.min(dim=0).values[None, :, None, None]
z_max = codebook.max(dim=0).values[None, :, None, None]
toks = args.s // f

one_hot = F.one_hot(torch.randint(n_toks, [toks * toks], device=device), n_toks).float()
z = (one_hot @ codebook).view([-1, toks, toks, e_dim]).permute(0, 3, 1, 2)
init, *_ = model.encode(torch.rand(1, 3, toks * f, toks * f, device=device) * 2 - 1)
assert init.shape == z.shape, (init.shape, z.shape)

augs = nn.Sequential(
    K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros", keepdim=True),
    K.RandomPerspective(distortion_scale=0.7, p=0.7),
    K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
    K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True, p=0.7),
)
normalize = transforms.Normalize(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711])
embed = perceptor.encode_text(clip.tokenize("a red apple").to(device)).float()


def synth(z):
    flat = z.movedim(1, 3)
    d = flat.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.T
    z_q = F.one_hot(d.argmin(-1), codebook.shape[0]).to(d.dtype) @ codebook
    z_q = flat + (z_q - flat).detach()  # straight-through
    return model.decode(z_q.movedim(3, 1)).add(1).div(2).clamp(0, 1)


steps = {}
for name, make in (("Adam", lambda p: optim.Adam(p, lr=0.1)), ("DiffGrad", lambda p: DiffGrad(p, lr=0.1, eps=1e-9)),
                   ("AdamP", lambda p: AdamP(p, lr=0.1))):
    latent = z.clone().contiguous().requires_grad_(True)  # AdamP views p.data flat: a permuted z fails
    opt = make([latent])
    out = synth(latent)
    pooled = (nn.AdaptiveAvgPool2d((cut_size, cut_size))(out) + nn.AdaptiveMaxPool2d((cut_size, cut_size))(out)) / 2
    cutouts = augs(torch.cat([pooled] * 4))
    features = perceptor.encode_image(normalize(cutouts)).float()
    dists = F.normalize(features.unsqueeze(1), dim=2).sub(F.normalize(embed.unsqueeze(0), dim=2)).norm(dim=2)
    loss = dists.div(2).arcsin().pow(2).mul(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.inference_mode():
        latent.copy_(latent.maximum(z_min).minimum(z_max))
    steps[name] = {"loss": loss.item(), "moved": bool((latent - z).abs().sum() > 0)}

image = synth(z.detach())
imageio.imwrite(args.o, np.transpose(np.array(image.mul(255).clamp(0, 255)[0].cpu().detach().numpy().astype(np.uint8)),
                                     (1, 2, 0)))
TF.to_pil_image(image[0].cpu())
print(json.dumps({"device": str(z.device), "cut_size": cut_size, "factor": f, "n_toks": n_toks, "e_dim": e_dim,
                  "output_dim": perceptor.visual.output_dim, "steps": steps, "low_vram": low_vram,
                  "taming": vqgan.__name__, "shape": list(image.shape)}))
