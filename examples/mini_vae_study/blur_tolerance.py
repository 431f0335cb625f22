"""How much softening of the references does effnet-lite0's 807 reading survive? (no training)

    HF_HUB_OFFLINE=1 python examples/mini_vae_study/blur_tolerance.py

The 8 references (128 px) Gaussian-blurred (PIL radius r) or down- and up-sampled (bicubic),
scored as `spurcli score` feeds images: a target for how sharp a VAE's reconstructions must be.
"""

import sys
from pathlib import Path

import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import classify, names, references

torch.set_num_threads(1)
refs = references()
print("softening          k/8 in 807  mean p(807)  top-1")
for r in (0, 0.5, 0.75, 1.0, 1.5):
    imgs = [im.filter(ImageFilter.GaussianBlur(r)) for im in refs]
    top1, p = classify(imgs)
    print(f"gaussian r={r:<5} {int((top1 == 807).sum())}/8  {p.mean():.4f}  {names(top1)}")
for s in (96, 64, 48):
    imgs = [im.resize((s, s), Image.BICUBIC).resize((128, 128), Image.BICUBIC) for im in refs]
    top1, p = classify(imgs)
    print(f"down-up {s:3d} px  {int((top1 == 807).sum())}/8  {p.mean():.4f}  {names(top1)}")
