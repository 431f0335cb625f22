"""How hard each finetune loss term pushes the UNet, by timestep: the SFSL gradient study.

    HF_HUB_OFFLINE=1 python benchmarks/sfsl_gradients.py               # ~3 min on one CPU core
    HF_HUB_OFFLINE=1 python benchmarks/sfsl_gradients.py --per-bin 8 --bins 10 --model mini

On the `mini` model (its VAE works, so SFSL's gradient is real, unlike through `tiny`'s random
decoder), with the brick world's references and effnet-lite0 as the extractor, for timesteps drawn
in equal bins of [0, 1000): the L2 norm of the gradient that each term puts on the UNet's weights,
each term alone (spurcli.generate.losses' functions, the same ones `finetune` calls):

    instance  MSE(pred, target) on the references with the instance prompt
    prior     the same on the references with the class prompt (stands in for prior images)
    sfsl      L_sfsl of the one-step x0 estimate (weight 1: multiply by --sfsl-weight)
    dL/dx0    the norm of SFSL's gradient w.r.t. the x0 latents (the part the extractor and the
              decoder decide, before the chain rule through the x0 estimate)

next to the analytic factor d x0_hat / d pred of the x0 estimate: sqrt(1 - a_t) / sqrt(a_t) for
epsilon prediction (x0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t)) and sqrt(1 - a_t) for
v-prediction (x0 = sqrt(a_t) z_t - sqrt(1 - a_t) v). The SFSL weight-gradient is (about) the
product of the two; docs/sfsl.md reads the table and derives the default from it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from spurcli.generate.losses import (
    SFSL,
    add_noise,
    diffusion_target,
    predicted_x0,
    sfsl_loss,
    to_latents,
)
from spurcli.generate.pipelines import load_pipeline
from spurcli.images import read_folder

REFERENCES = Path(__file__).resolve().parents[1] / "examples" / "brick_world" / "references"


def grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--references", type=Path, default=REFERENCES)
    parser.add_argument("--extractor", default="effnet-lite0")
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--per-bin", type=int, default=6, help="timesteps drawn per bin")
    parser.add_argument("--noun", default="wall")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    from diffusers import DDPMScheduler

    from spurcli.plugins import extractors

    pipe = load_pipeline(args.model)
    unet, vae = pipe.unet.train(), pipe.vae.eval().requires_grad_(False)
    params = [p for p in unet.parameters() if p.requires_grad]
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = schedule.alphas_cumprod
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = [img.convert("RGB").resize((size, size)) for _, img in read_folder(args.references)[0]]
    pixels = torch.stack(
        [torch.tensor(list(img.getdata())).T.reshape(3, size, size) for img in images]
    )
    pixels = pixels.float() / 255
    extractor = extractors().load(args.extractor).module.eval().requires_grad_(False)
    with torch.no_grad():
        latents = to_latents(vae, vae.encode(pixels * 2 - 1).latent_dist.mean)
        sfsl = SFSL(extractor, extractor(pixels).float(), weight=1.0, target="paired")
        ids = pipe.tokenizer(
            [f"a photo of sks {args.noun}", f"a photo of {args.noun}"],
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        text = pipe.text_encoder(ids)[0]

    width = len(alphas) // args.bins
    g = torch.Generator().manual_seed(0)
    header = (
        f"{'t bin':>9} {'|g inst|':>9} {'|g prior|':>9} {'|g sfsl|':>9} {'sfsl/inst':>9} "
        f"{'|dL/dx0|':>9} {'L_sfsl':>7} {'eps fac':>8} {'v fac':>6}"
    )
    kind = schedule.config.prediction_type
    print(f"model {args.model}, {len(images)} references, extractor {args.extractor}, ")
    print(f"{args.per_bin} timesteps per bin, prediction {kind}")
    print(header)
    for b in range(args.bins):
        lo, hi = b * width, (b + 1) * width
        rows = []
        for _ in range(args.per_bin):
            i = int(torch.randint(0, len(images), (1,), generator=g))
            t = torch.randint(lo, hi, (1,), generator=g)
            z0 = latents[i : i + 1]
            noise = torch.randn(z0.shape, generator=g)
            noisy = add_noise(z0, noise, t, alphas)
            target = diffusion_target(z0, noise, t, alphas, "epsilon")
            pred_inst = unet(noisy, t, text[:1]).sample
            pred_prior = unet(noisy, t, text[1:]).sample
            inst = torch.nn.functional.mse_loss(pred_inst, target)
            prior = torch.nn.functional.mse_loss(pred_prior, target)
            x0 = predicted_x0(noisy, pred_inst, t, alphas, "epsilon")
            x0_leaf = x0.detach().requires_grad_(True)
            loss_x0 = sfsl_loss(sfsl, vae, x0_leaf, t, torch.tensor([i]))
            (d_x0,) = torch.autograd.grad(loss_x0, x0_leaf)
            loss = sfsl_loss(sfsl, vae, x0, t, torch.tensor([i]))
            rows.append(
                (
                    grad_norm(inst, params),
                    grad_norm(prior, params),
                    grad_norm(loss, params),
                    float(d_x0.detach().norm()),
                    float(loss.detach()),
                )
            )
        mean = [sum(r[k] for r in rows) / len(rows) for k in range(5)]
        a = float(alphas[(lo + hi) // 2])
        eps_factor = math.sqrt(1 - a) / math.sqrt(a)
        v_factor = math.sqrt(1 - a)
        print(
            f"{lo:>4}-{hi - 1:<4} {mean[0]:9.3g} {mean[1]:9.3g} {mean[2]:9.3g} "
            f"{mean[2] / mean[0]:9.3g} {mean[3]:9.3g} {mean[4]:7.3f} "
            f"{eps_factor:8.3g} {v_factor:6.3f}"
        )


if __name__ == "__main__":
    main()
