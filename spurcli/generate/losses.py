"""The finetune objective: DreamBooth + prior preservation + spurious feature similarity (SFSL).

    from spurcli.generate.losses import SFSL, step_losses
    sfsl = SFSL(extractor, reference_features, weight=0.1)          # features computed once
    losses = step_losses(unet, vae, alphas_cumprod, "epsilon", latents=z0, noise=eps,
                         timesteps=t, encoder_hidden_states=text, n_instance=1,
                         prior_weight=1.0, sfsl=sfsl, ref_index=idx)
    losses.total.backward()     # reaches the UNet, and the text encoder through `text`

The batch holds the instance half first (reference images, "a photo of [V] <noun>") and the class
half after it (prior images, "a photo of <noun>"), so one UNet call serves both, as in diffusers'
DreamBooth script. The loss (docs/architecture.md, "The method"):

    L = L_inst + w_prior L_prior + w_sfsl L_sfsl
    L_inst, L_prior  MSE of the UNet's prediction against its target (epsilon, or v) per half
    L_sfsl           on the instance half only: x0_hat from the one-step estimate, decoded by the
                     frozen VAE, clamped to [-1, 1], mapped to [0, 1], fed to the frozen extractor;
                     distance to a reference feature (1 - cos, or mean squared difference);
                     with target "energy", the energy distance between the batch's features and
                     the references' as two sets (`energy_distance`)

With ``SFSL.sample_steps = N`` the image scored is instead the model's own: N deterministic DDIM
steps from the step's instance noise with the instance prompt (`sampled_x0`), only the last one
differentiated (the first N - 1 under no_grad, as DRaFT-1 does), and its x0 estimate decoded.
The one-step estimate from a noised reference asks for much what L_inst already asks (the
reference back); a sample from noise is what `spurcli sample` will draw (docs/sfsl.md).

Gradients of L_sfsl flow through the extractor and the VAE decoder (both frozen: their weights get
no gradient, their activations carry it) into the UNet's prediction and from there into the text
encoder. With w_sfsl = 0 nothing of SFSL is computed: the objective is exactly DreamBooth's.
Everything here is a pure function of tensors and modules, so each piece can be tested alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class SFSL:
    """The spurious feature similarity loss's frozen parts and settings."""

    extractor: torch.nn.Module  # images in [0, 1] -> (B, D) features; frozen, in eval mode
    reference: torch.Tensor  # (N, D) float32 features of the N reference images, computed once
    weight: float = 0.1  # w_sfsl
    # paired | mean | nearest: which reference feature each sample meets; energy: the batch's
    # features against the references' as two sets (`energy_distance`), no feature per sample
    target: str = "paired"
    distance: str = "cosine"  # cosine (1 - cos) | l2 (mean squared difference over D)
    max_timestep: int | None = None  # apply only to samples with t <= this (None: all)
    decode_size: int | None = None  # the decoded x0_hat resized to this many pixels (None: as is)
    decoder: Any = None  # decodes x0_hat (e.g. taesd); None: the VAE given to step_losses
    # 0: x0_hat of the noised references (the paper's). N: the model's own x0 after N DDIM steps
    # from noise with the instance prompt, only the last step differentiated (`sampled_x0`).
    sample_steps: int = 0
    # 0: the extractor sees the whole decoded image. s > 0: a random square crop of it, its side
    # 1 - s..1 of the image's, resized back (`random_crops`): features that hold under a change
    # of view, as input diversity makes adversarial images transfer to other networks.
    random_crop: float = 0.0
    # How many of the step's instance samples SFSL scores, the first ones (None: all). Its cost
    # (decoder, extractor, and with sample_steps the UNet) grows with it; DreamBooth's does not.
    batch_size: int | None = None


@dataclass
class Losses:
    """Every term of one micro-batch; ``total`` carries the graph, the rest are for the log."""

    total: torch.Tensor
    instance: torch.Tensor
    prior: torch.Tensor
    sfsl: torch.Tensor
    # The weighted terms with their graphs (instance, prior, sfsl; a term not computed is
    # absent), for per-term gradient norms (`term_grad_norms`).
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample scalars (B,) broadcast against a (B, C, H, W) tensor."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def _alphas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> Any:
    a = alphas_cumprod.to(like.device, torch.float32)[timesteps.to(like.device)]
    return _expand(a.sqrt(), like), _expand((1 - a).sqrt(), like)


def diffusion_target(
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """What the UNet is trained to predict for z_t = sqrt(a) z0 + sqrt(1 - a) eps."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        sqrt_a, sqrt_1ma = _alphas(alphas_cumprod, timesteps, latents)
        return sqrt_a * noise - sqrt_1ma * latents  # v = sqrt(a) eps - sqrt(1 - a) z0
    if prediction_type == "sample":
        return latents
    raise ValueError(f"unknown prediction type {prediction_type!r}; expected {PREDICTION_TYPES}")


def add_noise(
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps (the DDPM forward process)."""
    sqrt_a, sqrt_1ma = _alphas(alphas_cumprod, timesteps, latents)
    return sqrt_a * latents + sqrt_1ma * noise


def predicted_x0(
    noisy: torch.Tensor,
    model_pred: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """The one-step estimate of z0 from z_t and the UNet's prediction."""
    sqrt_a, sqrt_1ma = _alphas(alphas_cumprod, timesteps, noisy)
    if prediction_type == "epsilon":
        return (noisy - sqrt_1ma * model_pred) / sqrt_a
    if prediction_type == "v_prediction":
        return sqrt_a * noisy - sqrt_1ma * model_pred  # z0 = sqrt(a) z_t - sqrt(1 - a) v
    if prediction_type == "sample":
        return model_pred
    raise ValueError(f"unknown prediction type {prediction_type!r}; expected {PREDICTION_TYPES}")


def predicted_noise(
    noisy: torch.Tensor,
    model_pred: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """The noise estimate eps_hat (what a DDIM step needs): the noise that makes z_t from
    `predicted_x0`'s estimate, z_t = sqrt(a) z0_hat + sqrt(1 - a) eps_hat."""
    if prediction_type == "epsilon":
        return model_pred  # as predicted, not through a round trip
    x0 = predicted_x0(noisy, model_pred, timesteps, alphas_cumprod, prediction_type)
    sqrt_a, sqrt_1ma = _alphas(alphas_cumprod, timesteps, noisy)
    return (noisy - sqrt_a * x0) / sqrt_1ma


def sample_timesteps(steps: int, train_timesteps: int) -> list[int]:
    """DDIM's "trailing" spacing: 1000 training steps, 4 steps -> 999, 749, 499, 249."""
    if not 1 <= steps <= train_timesteps:
        raise ValueError(f"sample steps must be in 1..{train_timesteps}, not {steps}")
    return [round(train_timesteps - k * train_timesteps / steps) - 1 for k in range(steps)]


def sampled_x0(
    unet: Any,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    noise: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """The x0 estimate after ``steps`` deterministic DDIM steps (eta 0, trailing spacing, no
    guidance) from ``noise``, at the last of `sample_timesteps`. The first steps run under no_grad
    (their inputs are detached), the last with the graph: it reaches the UNet and, through
    ``encoder_hidden_states``, the text encoder. Equal to diffusers' DDIMScheduler
    (``timestep_spacing="trailing"``, ``clip_sample=False``): its ``pred_original_sample`` at
    the last step (tests/test_losses.py)."""
    timesteps = sample_timesteps(steps, len(alphas_cumprod))
    alphas = alphas_cumprod.to(noise.device, torch.float32)
    latents = noise.float()

    def at(t: int) -> torch.Tensor:
        return torch.full((len(latents),), t, device=latents.device, dtype=torch.long)

    with torch.no_grad():
        states = encoder_hidden_states.detach()
        for t, t_next in itertools.pairwise(timesteps):
            now = at(t)
            pred = unet(latents.to(noise.dtype), now, states, return_dict=False)[0].float()
            x0 = predicted_x0(latents, pred, now, alphas, prediction_type)
            eps = predicted_noise(latents, pred, now, alphas, prediction_type)
            latents = alphas[t_next].sqrt() * x0 + (1 - alphas[t_next]).sqrt() * eps
    last = at(timesteps[-1])
    pred = unet(latents.to(noise.dtype), last, encoder_hidden_states, return_dict=False)[0]
    return predicted_x0(latents, pred.float(), last, alphas, prediction_type)


def to_latents(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """The diffusion model's latents from the VAE's own (a posterior sample): ``(z - shift) *
    scale``, as diffusers' SD3/Flux training scripts do; SD 1.x's VAEs have no shift (None)."""
    config = vae.config
    shift = getattr(config, "shift_factor", None)
    if shift:
        z = z - shift
    return z * config.scaling_factor


def from_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_latents`: what the VAE decodes, in its own dtype."""
    config = vae.config
    z = latents.to(vae.dtype) / config.scaling_factor
    shift = getattr(config, "shift_factor", None)
    if shift:
        z = z + shift
    return z


def decode_to_unit(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode the diffusion model's latents (`from_latents`) to images clamped and mapped
    to [0, 1]."""
    images = vae.decode(from_latents(vae, latents)).sample
    return (images.clamp(-1, 1) + 1) / 2


def feature_distance(f: torch.Tensor, ref: torch.Tensor, distance: str) -> torch.Tensor:
    """Per-sample distance (B,) between features f (B, D) and ref (B, D)."""
    if distance == "cosine":
        return 1 - F.cosine_similarity(f, ref, dim=1)
    if distance == "l2":
        return (f - ref).pow(2).mean(dim=1)
    raise ValueError(f"unknown SFSL distance {distance!r}; expected cosine or l2")


def reference_for(
    f: torch.Tensor,
    reference: torch.Tensor,
    index: torch.Tensor | None,
    target: str,
    distance: str,
    paired: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference feature (B, D) each generated feature in f (B, D) is pulled towards.

    ``paired`` (B, D): for the paired target, the features of exactly the crop each sample was
    noised from (None: the reference image's row of ``reference``, its centre crop)."""
    if target == "paired":
        if paired is not None:
            return paired.to(f.device)
        if index is None:
            raise ValueError("paired SFSL needs the index of each sample's reference image")
        return reference[index.to(reference.device)]
    if target == "mean":
        return reference.mean(dim=0, keepdim=True).expand(f.shape[0], -1)
    if target == "nearest":
        with torch.no_grad():  # the choice is not differentiated, only the distance to it
            if distance == "cosine":
                scores = F.normalize(f.float(), dim=1) @ F.normalize(reference, dim=1).T
            else:
                scores = -torch.cdist(f.float(), reference)
            nearest = scores.argmax(dim=1)
        return reference[nearest]
    raise ValueError(f"unknown SFSL target {target!r}; expected paired, mean or nearest")


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (A, B) between the rows of a and b, with a gradient everywhere (the
    clamp keeps sqrt's infinite slope at 0 off the diagonal of a set against itself)."""
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1).clamp_min(1e-12).sqrt()


def _mean_within(d: torch.Tensor) -> torch.Tensor:
    """The mean of a set's distances to itself over pairs of two different members (0 for one)."""
    n = d.shape[0]
    if n < 2:
        return d.new_zeros(())
    return (d.sum() - d.diagonal().sum()) / (n * (n - 1))


def energy_distance(f: torch.Tensor, reference: torch.Tensor, distance: str) -> torch.Tensor:
    """The energy distance between the features f (B, D) of a batch and the references' (N, D):
    2 E|X - Y| - E|X - X'| - E|Y - Y'|, unbiased (pairs of two different members within a set;
    dcor's U statistic). With ``cosine`` both are L2-normalised first, so |a - b| = sqrt(2 - 2
    cos); with ``l2`` the raw features.

    Zero in expectation only when the two sets come from one distribution. Against ``mean`` and
    ``nearest``, which pull every sample to a point, its -E|X - X'| rewards samples that differ
    from each other: a batch that covers the references beats one that sits at their centre."""
    if distance == "cosine":
        f, reference = F.normalize(f, dim=1), F.normalize(reference, dim=1)
    elif distance != "l2":
        raise ValueError(f"unknown SFSL distance {distance!r}; expected cosine or l2")
    cross = _pairwise(f, reference).mean()
    return 2 * cross - _mean_within(_pairwise(f, f)) - _mean_within(_pairwise(reference, reference))


def random_crops(images: torch.Tensor, views: torch.Tensor, shrink: float) -> torch.Tensor:
    """Each image's square crop, resized back to the full size (bilinear, differentiable).

    ``views`` (B, 3) in [0, 1): the first picks the crop's side, 1 - shrink * v of the image's;
    the other two its place, from the top-left corner (0) to the bottom-right (1)."""
    views = views.to(images.device, torch.float32)
    side = 1 - shrink * views[:, 0]
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = side  # sample [-side, side] around the crop's centre...
    theta[:, :, 2] = (1 - side)[:, None] * (2 * views[:, 1:] - 1)  # ...moved within the image
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    grid = grid.to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def sfsl_loss(
    sfsl: SFSL,
    vae: Any,
    x0_latents: torch.Tensor,
    timesteps: torch.Tensor | None,
    ref_index: torch.Tensor | None = None,
    ref_features: torch.Tensor | None = None,
    views: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_sfsl of the instance samples x0_latents (B, 4, h, w); 0 if none is under the ceiling.

    ``timesteps``: those x0_latents were estimated at, for the ceiling (None: no ceiling, as for
    samples from noise). ``ref_features`` (B, D): the paired target's features, those of each
    sample's own crop. ``views`` (B, 3): each sample's random crop (`random_crops`), used when
    ``sfsl.random_crop`` is set."""
    if sfsl.random_crop and views is None:
        raise ValueError("SFSL's random crop needs each sample's view (Batch.views)")
    if sfsl.max_timestep is not None and timesteps is not None:
        keep = timesteps <= sfsl.max_timestep
        if not bool(keep.any()):
            return x0_latents.new_zeros((), dtype=torch.float32)  # skip the decode entirely
        x0_latents = x0_latents[keep]
        ref_index = ref_index[keep.to(ref_index.device)] if ref_index is not None else None
        if ref_features is not None:
            ref_features = ref_features[keep.to(ref_features.device)]
        if views is not None:
            views = views[keep.to(views.device)]
    images = decode_to_unit(sfsl.decoder or vae, x0_latents)
    if sfsl.decode_size is not None and sfsl.decode_size < images.shape[-1]:
        # The decoded image itself, resized (differentiably): decoding a shrunken latent instead
        # would be cheaper but is another image (feature cosine ~0.5 to this on `mini`,
        # docs/sfsl.md), so the cheap decoder is --sfsl-decoder taesd.
        size = (sfsl.decode_size, sfsl.decode_size)
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True).clamp(0, 1)
    if sfsl.random_crop:
        images = random_crops(images, views, sfsl.random_crop)
    dtype = next((p.dtype for p in sfsl.extractor.parameters()), images.dtype)
    f = sfsl.extractor(images.to(dtype)).float()
    reference = sfsl.reference.to(f.device)
    if sfsl.target == "energy":
        return energy_distance(f, reference, sfsl.distance)
    ref = reference_for(f, reference, ref_index, sfsl.target, sfsl.distance, ref_features)
    return feature_distance(f, ref, sfsl.distance).mean()


def step_losses(
    unet: Any,
    vae: Any,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    *,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    n_instance: int,
    prior_weight: float = 1.0,
    sfsl: SFSL | None = None,
    ref_index: torch.Tensor | None = None,
    ref_features: torch.Tensor | None = None,
    views: torch.Tensor | None = None,
) -> Losses:
    """All loss terms of one micro-batch: instance half first, class half (if any) after it.

    ``ref_features`` (n_instance, D): the paired SFSL target of each instance sample, the
    features of the crop it was noised from (None: its reference image's centre crop).
    ``views`` (B, 3): the random crop SFSL scores of each sample (`random_crops`)."""
    noisy = add_noise(latents, noise, timesteps, alphas_cumprod)
    model_pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    target = diffusion_target(latents, noise, timesteps, alphas_cumprod, prediction_type)
    pred, target = model_pred.float(), target.float()
    loss_instance = F.mse_loss(pred[:n_instance], target[:n_instance])
    total = loss_instance
    terms = {"instance": loss_instance}
    zero = loss_instance.new_zeros(())
    loss_prior = zero
    if n_instance < latents.shape[0]:
        loss_prior = F.mse_loss(pred[n_instance:], target[n_instance:])
        terms["prior"] = prior_weight * loss_prior
        total = total + terms["prior"]
    loss_sfsl = zero
    if sfsl is not None and sfsl.weight != 0:
        k = min(n_instance, sfsl.batch_size or n_instance)  # the instance samples SFSL scores
        at = None  # samples from noise: no ceiling
        if sfsl.sample_steps:  # the model's own image; the step's instance noise seeds it
            x0 = sampled_x0(
                unet,
                alphas_cumprod,
                prediction_type,
                noise[:k],
                encoder_hidden_states[:k],
                sfsl.sample_steps,
            )
        else:
            at = timesteps[:k]
            x0 = predicted_x0(noisy[:k].float(), pred[:k], at, alphas_cumprod, prediction_type)
        index = ref_index[:k] if ref_index is not None else None
        paired = ref_features[:k] if ref_features is not None else None
        seen = views[:k] if views is not None else None
        loss_sfsl = sfsl_loss(sfsl, vae, x0, at, index, paired, seen)
        terms["sfsl"] = sfsl.weight * loss_sfsl
        total = total + terms["sfsl"]
    detached = (loss_instance.detach(), loss_prior.detach(), loss_sfsl.detach())
    return Losses(total, *detached, terms=terms)


def term_grad_norms(
    terms: Mapping[str, torch.Tensor],
    params: Iterable[torch.Tensor],
    names: Iterable[str] = ("instance", "prior", "sfsl"),
    scale: float = 1.0,
) -> torch.Tensor:
    """The L2 norm of each term's gradient on ``params``, in the order of ``names`` (0 for a term
    that is absent or does not depend on them).

    Computed with `torch.autograd.grad` on the retained graph: ``.grad`` is not touched and no
    random number is drawn, so the step's own backward pass and update are unchanged. ``scale``
    multiplies each term first and divides the norm after (fp16's loss scale, against underflow).

    With several processes (torch.distributed initialised) each term's gradient is averaged over
    them first, as DDP averages the step's gradient: the norm is then the whole batch's, the same
    as one process with that batch (every process must call this on the same steps).
    """
    params = list(params)
    norms = []
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    divide = scale * (dist.get_world_size() if distributed else 1)  # the sum's norm -> the mean's
    for name in names:
        term = terms.get(name)
        if term is None or not term.requires_grad:
            norms.append(torch.zeros((), device=params[0].device))
            continue
        grads = torch.autograd.grad(term * scale, params, retain_graph=True, allow_unused=True)
        if distributed:  # the same collectives in every process: a missing gradient counts as 0
            grads = [
                torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)
            ]
            for g in grads:
                dist.all_reduce(g)  # summed over processes
        found = [g.float().norm() for g in grads if g is not None]
        norm = torch.stack(found).norm() if found else torch.zeros((), device=params[0].device)
        norms.append(norm.to(params[0].device) / divide)
    return torch.stack(norms)
