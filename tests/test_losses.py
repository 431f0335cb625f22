"""The finetune objective (spurcli.generate.losses) on the tiny SD: exact, small, fast.

What must hold: the SFSL gradient reaches the UNet and the text encoder (through the frozen VAE
decoder and extractor, which themselves get none); with weight 0 the objective is DreamBooth's to
the bit (same loss, same gradients as a computation written from diffusers' own scheduler);
epsilon and v-prediction are both right; paired/mean/nearest pick the right reference features;
the energy target is dcor's energy distance and prefers a batch spread like the references.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from spurcli.generate.losses import (
    SFSL,
    add_noise,
    decode_to_unit,
    diffusion_target,
    energy_distance,
    feature_distance,
    predicted_noise,
    predicted_x0,
    random_crops,
    reference_for,
    sample_timesteps,
    sampled_x0,
    sfsl_loss,
    step_losses,
)
from spurcli.generate.pipelines import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Extractor(torch.nn.Module):
    """A conv 'backbone' with real parameters, so 'no gradient reaches them' means something."""

    dim = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.adaptive_avg_pool2d(torch.relu(self.conv(images)), 1).flatten(1)


@pytest.fixture(scope="module")
def tiny():
    pipe = build_tiny_pipeline()
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return pipe, scheduler


def _batch(pipe, n_instance=2, n_class=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = n_instance + n_class
    latents = torch.randn(b, 4, size // 8, size // 8, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.tensor([10, 900, 400, 700][:b])
    ids = pipe.tokenizer(
        ["a photo of sks flower", "a photo of flower"],
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    rows = torch.tensor([0] * n_instance + [1] * n_class)
    return latents, noise, timesteps, ids, rows


def _frozen(module):
    return module.eval().requires_grad_(False)


def _grads(*modules):
    return {
        f"{i}.{n}": p.grad.clone()
        for i, m in enumerate(modules)
        for n, p in m.named_parameters()
        if p.grad is not None
    }


def _zero(*modules):
    for m in modules:
        m.zero_grad(set_to_none=True)


def test_noise_and_targets_match_diffusers(tiny):
    pipe, scheduler = tiny
    latents, noise, timesteps, *_ = _batch(pipe)
    a = scheduler.alphas_cumprod
    assert torch.equal(
        add_noise(latents, noise, timesteps, a), scheduler.add_noise(latents, noise, timesteps)
    )
    v = diffusion_target(latents, noise, timesteps, a, "v_prediction")
    assert torch.allclose(v, scheduler.get_velocity(latents, noise, timesteps), atol=1e-6)
    assert torch.equal(diffusion_target(latents, noise, timesteps, a, "epsilon"), noise)
    assert torch.equal(diffusion_target(latents, noise, timesteps, a, "sample"), latents)
    with pytest.raises(ValueError, match="prediction type"):
        diffusion_target(latents, noise, timesteps, a, "flow")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_estimate_inverts_the_forward_process(tiny, prediction_type):
    """A perfect prediction gives back z0 exactly (up to float rounding), at every noise level."""
    pipe, scheduler = tiny
    latents, noise, _, *_ = _batch(pipe)
    a = scheduler.alphas_cumprod
    for t in (0, 250, 999):
        timesteps = torch.full((latents.shape[0],), t)
        noisy = add_noise(latents, noise, timesteps, a)
        perfect = diffusion_target(latents, noise, timesteps, a, prediction_type)
        x0 = predicted_x0(noisy, perfect, timesteps, a, prediction_type)
        # At t=999 epsilon-x0 divides by sqrt(a) ~ 0.07: rounding grows by ~1/sqrt(a).
        assert torch.allclose(x0, latents, atol=1e-4 if t < 999 else 2e-3), (prediction_type, t)
    wrong = predicted_x0(noisy, torch.zeros_like(noisy), timesteps, a, prediction_type)
    assert not torch.allclose(wrong, latents, atol=1e-2)


def test_sfsl_gradient_reaches_unet_and_text_encoder_not_frozen_parts(tiny):
    pipe, scheduler = tiny
    unet, text_encoder = pipe.unet.train(), pipe.text_encoder.train()
    vae, extractor = _frozen(pipe.vae), _frozen(Extractor())
    latents, noise, timesteps, ids, rows = _batch(pipe, n_instance=2, n_class=0)
    a = scheduler.alphas_cumprod
    reference = torch.randn(3, extractor.dim)
    sfsl = SFSL(extractor, reference, weight=1.0)
    _zero(unet, text_encoder)
    noisy = add_noise(latents, noise, timesteps, a)
    states = text_encoder(ids)[0][rows]
    pred = unet(noisy, timesteps, states).sample
    x0 = predicted_x0(noisy, pred, timesteps, a, "epsilon")
    loss = sfsl_loss(sfsl, vae, x0, timesteps, torch.tensor([0, 2]))
    loss.backward()
    unet_grads = [p.grad for p in unet.parameters()]
    text_grads = [p.grad for p in text_encoder.parameters()]
    assert sum(g.abs().sum() for g in unet_grads if g is not None) > 0
    assert sum(g.abs().sum() for g in text_grads if g is not None) > 0
    # cross-attention weights and the token embeddings in particular (the identifier's way in)
    assert text_encoder.get_input_embeddings().weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())
    assert all(p.grad is None for p in extractor.parameters())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_noise_estimate_inverts_the_forward_process(tiny, prediction_type):
    pipe, scheduler = tiny
    latents, noise, timesteps, *_ = _batch(pipe)
    a = scheduler.alphas_cumprod
    noisy = add_noise(latents, noise, timesteps, a)
    perfect = diffusion_target(latents, noise, timesteps, a, prediction_type)
    assert torch.allclose(
        predicted_noise(noisy, perfect, timesteps, a, prediction_type), noise, atol=1e-4
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampled_x0_is_diffusers_ddim(tiny, prediction_type):
    """The chain SFSL scores with --sfsl-sample-steps is DDIM as diffusers writes it: the x0
    estimate (``pred_original_sample``) of DDIMScheduler's last step, trailing spacing, eta 0."""
    pipe, _ = tiny
    unet = pipe.unet.eval()
    _, noise, _, ids, rows = _batch(pipe, n_instance=2, n_class=0)
    states = pipe.text_encoder(ids)[0][rows].detach()
    ddim = DDIMScheduler.from_config(
        pipe.scheduler.config,
        timestep_spacing="trailing",
        clip_sample=False,
        prediction_type=prediction_type,
    )
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == sample_timesteps(4, 1000) == [999, 749, 499, 249]
    z = noise.clone()
    with torch.no_grad():
        for t in ddim.timesteps:
            step = ddim.step(unet(z, t, states).sample, t, z)
            z = step.prev_sample
        ours = sampled_x0(unet, ddim.alphas_cumprod, prediction_type, noise, states, 4)
    assert torch.allclose(ours, step.pred_original_sample, atol=1e-4)
    with pytest.raises(ValueError, match="sample steps"):
        sample_timesteps(0, 1000)


def test_sampled_sfsl_differentiates_only_the_last_step(tiny):
    """The gradient reaches the UNet and the text encoder through the last call alone: the first
    calls run under no_grad (a UNet that records its calls sees grad mode off for them)."""
    pipe, scheduler = tiny
    unet, text_encoder = pipe.unet.train(), pipe.text_encoder.train()
    vae, extractor = _frozen(pipe.vae), _frozen(Extractor())
    latents, noise, timesteps, ids, rows = _batch(pipe, n_instance=2, n_class=0)
    grad_modes: list[bool] = []
    hook = unet.register_forward_pre_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    _zero(unet, text_encoder)
    sfsl = SFSL(extractor, torch.randn(3, extractor.dim), weight=1.0, target="mean", sample_steps=3)
    try:
        losses = step_losses(
            unet,
            vae,
            scheduler.alphas_cumprod,
            "epsilon",
            latents=latents,
            noise=noise,
            timesteps=timesteps,
            encoder_hidden_states=text_encoder(ids)[0][rows],
            n_instance=2,
            sfsl=sfsl,
        )
    finally:
        hook.remove()
    assert grad_modes == [True, False, False, True]  # DreamBooth's call, then the chain
    _zero(unet, text_encoder)
    losses.terms["sfsl"].backward()
    assert text_encoder.get_input_embeddings().weight.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in unet.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in vae.parameters())
    assert extractor.calls == 1 and losses.sfsl > 0


@pytest.mark.parametrize("sample_steps", [0, 2])
def test_sfsl_batch_size_scores_the_first_instance_samples(tiny, sample_steps):
    """sfsl.batch_size = k: SFSL is the loss of the first k instance samples alone (their x0,
    reference and view), the extractor sees k images, and the DreamBooth terms are unchanged."""
    pipe, scheduler = tiny
    unet, text_encoder = pipe.unet.eval(), pipe.text_encoder.eval()
    vae, extractor = _frozen(pipe.vae), _frozen(Extractor())
    latents, noise, timesteps, ids, rows = _batch(pipe, n_instance=2, n_class=1)
    a, states = scheduler.alphas_cumprod, text_encoder(ids)[0][rows].detach()
    reference, views = torch.randn(3, extractor.dim), torch.rand(3, 3)
    target = "mean" if sample_steps else "paired"
    seen: list[int] = []
    hook = extractor.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))

    def losses(batch_size):
        sfsl = SFSL(extractor, reference, 1.0, target, sample_steps=sample_steps,
                    random_crop=0.3, batch_size=batch_size)  # fmt: skip
        with torch.no_grad():
            return step_losses(unet, vae, a, "epsilon", latents=latents, noise=noise,
                               timesteps=timesteps, encoder_hidden_states=states, n_instance=2,
                               sfsl=sfsl, ref_index=torch.tensor([2, 0]), views=views)  # fmt: skip

    try:
        one, both, more = losses(1), losses(None), losses(5)
    finally:
        hook.remove()
    assert seen == [1, 2, 2]  # batch_size above the instance half: all of it
    with torch.no_grad():
        if sample_steps:
            x0 = sampled_x0(unet, a, "epsilon", noise[:1], states[:1], sample_steps)
        else:
            noisy = add_noise(latents[:1], noise[:1], timesteps[:1], a)
            pred = unet(noisy, timesteps[:1], states[:1]).sample
            x0 = predicted_x0(noisy, pred, timesteps[:1], a, "epsilon")
        sfsl = SFSL(extractor, reference, 1.0, target, random_crop=0.3)
        want = sfsl_loss(sfsl, vae, x0, None, torch.tensor([2]), views=views[:1])
    assert torch.allclose(one.sfsl, want, atol=1e-5)
    assert not torch.allclose(one.sfsl, both.sfsl)
    assert torch.equal(one.instance, both.instance) and torch.equal(both.sfsl, more.sfsl)


def test_sfsl_weight_zero_is_exactly_dreambooth(tiny):
    """Loss and gradients equal a DreamBooth computation written with diffusers' scheduler."""
    pipe, scheduler = tiny
    unet, text_encoder = pipe.unet.train(), pipe.text_encoder.train()
    vae, extractor = _frozen(pipe.vae), _frozen(Extractor())
    latents, noise, timesteps, ids, rows = _batch(pipe)
    a = scheduler.alphas_cumprod

    _zero(unet, text_encoder)
    states = text_encoder(ids)[0][rows]
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = unet(noisy, timesteps, states).sample
    inst, prior = F.mse_loss(pred[:2], noise[:2]), F.mse_loss(pred[2:], noise[2:])
    (inst + 0.7 * prior).backward()
    expected = _grads(unet, text_encoder)

    _zero(unet, text_encoder)
    calls = extractor.calls
    sfsl = SFSL(extractor, torch.randn(3, extractor.dim), weight=0.0)
    losses = step_losses(
        unet,
        vae,
        a,
        "epsilon",
        latents=latents,
        noise=noise,
        timesteps=timesteps,
        encoder_hidden_states=text_encoder(ids)[0][rows],
        n_instance=2,
        prior_weight=0.7,
        sfsl=sfsl,
        ref_index=torch.tensor([0, 1]),
    )
    losses.total.backward()
    got = _grads(unet, text_encoder)
    assert extractor.calls == calls  # weight 0: SFSL not even computed
    assert torch.equal(losses.instance, inst.detach()) and torch.equal(losses.prior, prior.detach())
    assert torch.equal(losses.total.detach(), (inst + 0.7 * prior).detach())
    assert losses.sfsl.item() == 0.0
    assert got.keys() == expected.keys() and len(got) > 0
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    # ... and with a weight, the total is DreamBooth plus w * L_sfsl (it does contribute).
    sfsl.weight = 0.5
    with_sfsl = step_losses(
        unet,
        vae,
        a,
        "epsilon",
        latents=latents,
        noise=noise,
        timesteps=timesteps,
        encoder_hidden_states=text_encoder(ids)[0][rows],
        n_instance=2,
        prior_weight=0.7,
        sfsl=sfsl,
        ref_index=torch.tensor([0, 1]),
    )
    assert with_sfsl.sfsl.item() > 0
    assert torch.allclose(
        with_sfsl.total.detach(), (inst + 0.7 * prior).detach() + 0.5 * with_sfsl.sfsl, atol=1e-6
    )


def test_v_prediction_loss_uses_velocity_and_its_x0(tiny):
    pipe, scheduler = tiny
    unet = pipe.unet.train()
    vae, extractor = _frozen(pipe.vae), _frozen(Extractor())
    latents, noise, timesteps, ids, rows = _batch(pipe, n_instance=2, n_class=0)
    a = scheduler.alphas_cumprod
    with torch.no_grad():
        states = pipe.text_encoder(ids)[0][rows]
        losses = step_losses(
            unet,
            vae,
            a,
            "v_prediction",
            latents=latents,
            noise=noise,
            timesteps=timesteps,
            encoder_hidden_states=states,
            n_instance=2,
        )
        pred = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, states).sample
    velocity = scheduler.get_velocity(latents, noise, timesteps)
    assert torch.allclose(losses.instance, F.mse_loss(pred, velocity), atol=1e-6)
    assert not torch.allclose(losses.instance, F.mse_loss(pred, noise), atol=1e-3)
    # SFSL decodes the v-prediction x0 estimate: sqrt(a) z_t - sqrt(1 - a) v
    captured = {}
    real_decode = vae.decode

    def spy(z, *args, **kwargs):
        captured["z"] = z.clone()
        return real_decode(z, *args, **kwargs)

    vae.decode = spy
    try:
        with torch.no_grad():
            step_losses(
                unet,
                vae,
                a,
                "v_prediction",
                latents=latents,
                noise=noise,
                timesteps=timesteps,
                encoder_hidden_states=states,
                n_instance=2,
                sfsl=SFSL(extractor, torch.randn(2, 8), 1.0),
                ref_index=torch.tensor([0, 1]),
            )
    finally:
        del vae.decode
    ab = a[timesteps].reshape(-1, 1, 1, 1)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    x0 = ab.sqrt() * noisy - (1 - ab).sqrt() * pred
    assert torch.allclose(captured["z"], x0 / vae.config.scaling_factor, atol=1e-5)


def test_reference_targets_paired_mean_nearest():
    reference = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    f = torch.tensor([[0.1, 0.9], [-2.0, 0.1]])
    paired = reference_for(f, reference, torch.tensor([2, 0]), "paired", "cosine")
    assert torch.equal(paired, reference[[2, 0]])
    mean = reference_for(f, reference, None, "mean", "cosine")
    assert torch.allclose(mean, torch.tensor([[0.0, 1 / 3]] * 2))
    nearest = reference_for(f, reference, None, "nearest", "cosine")
    assert torch.equal(nearest, reference[[1, 2]])
    # l2-nearest differs from cosine-nearest when magnitudes differ
    far = torch.tensor([[10.0, 0.1]])
    refs = torch.tensor([[0.0, 0.5], [1.0, 0.0]])
    assert torch.equal(reference_for(far, refs, None, "nearest", "l2"), refs[[1]])
    with pytest.raises(ValueError, match="paired SFSL needs"):
        reference_for(f, reference, None, "paired", "cosine")
    with pytest.raises(ValueError, match="unknown SFSL target"):
        reference_for(f, reference, None, "closest", "cosine")


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("batch", [1, 5])
def test_energy_distance_is_dcors(distance, batch):
    """The hand-written estimator against dcor's unbiased one (cosine: L2-normalised first)."""
    import dcor

    g = torch.Generator().manual_seed(batch)
    f, reference = torch.randn(batch, 7, generator=g), torch.randn(4, 7, generator=g) + 0.5
    got = energy_distance(f, reference, distance)
    x, y = f, reference
    if distance == "cosine":
        x, y = F.normalize(f, dim=1), F.normalize(reference, dim=1)
    x, y = x.double().numpy(), y.double().numpy()
    if batch == 1:  # one sample has no pair: the within-batch term is 0 (dcor needs two)
        from scipy.spatial.distance import cdist

        want = 2 * cdist(x, y).mean() - cdist(y, y).sum() / (4 * 3)
    else:
        want = dcor.energy_distance(x, y, estimation_stat="U_STATISTIC")
    assert got.item() == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="distance"):
        energy_distance(f, reference, "l1")


def test_energy_target_prefers_a_spread_batch_to_a_collapsed_one():
    """Why the target exists: ``mean`` scores a batch sitting at the references' centre best; the
    energy distance scores a batch spread like the references lower, and its gradient on two
    identical samples pushes them apart (finite, although their distance is 0)."""
    reference = torch.eye(4)
    spread, centre = torch.eye(4), reference.mean(0, keepdim=True).expand(4, -1)

    def mean_loss(f):
        return feature_distance(f, reference_for(f, reference, None, "mean", "cosine"), "cosine")

    assert mean_loss(centre).mean() < mean_loss(spread).mean()
    assert energy_distance(spread, reference, "cosine") < energy_distance(
        centre, reference, "cosine"
    )
    twins = torch.tensor([[1.0, 1.0, 0.1, 0.0], [1.0, 1.0, 0.1, 0.0]], requires_grad=True)
    energy_distance(twins, reference, "l2").backward()
    assert torch.isfinite(twins.grad).all()
    near = twins.detach() + torch.tensor([[0.0, 0.0, 0.0, 0.01], [0.0, 0.0, 0.0, -0.01]])
    near.requires_grad_(True)
    energy_distance(near, reference, "l2").backward()
    step = near.detach() - 0.1 * near.grad  # one descent step
    assert torch.dist(step[0], step[1]) > torch.dist(near[0], near[1])  # pushed apart


def test_sfsl_loss_with_the_energy_target(tiny):
    """The energy target scores the decoded batch's features as one set against the references."""
    pipe, _ = tiny
    vae, extractor = _frozen(pipe.vae), _frozen(Extractor())
    x0, reference = torch.randn(3, 4, 4, 4), torch.randn(5, extractor.dim)
    got = sfsl_loss(SFSL(extractor, reference, 1.0, target="energy"), vae, x0, None)
    with torch.no_grad():
        want = energy_distance(extractor(decode_to_unit(vae, x0)), reference, "cosine")
    assert torch.allclose(got, want, atol=1e-6)


def test_random_crops_are_the_crop_resized():
    """A view picks a crop that F.interpolate of that crop reproduces (but on the crop's edge
    rows, where the view blends in the pixels beyond it and interpolate repeats the edge's own);
    shrink 0 is the image."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=g)
    views = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    got = random_crops(images, views, 0.5)
    corners = torch.stack([images[0, :, :8, :8], images[1, :, 8:, 8:]])  # side 1/2 of the image
    want = F.interpolate(corners, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got[:2, :, 1:-1, 1:-1], want[..., 1:-1, 1:-1])
    centre = images[2:, :, 2:14, 2:14]  # side 1 - 0.5 * 0.5 = 3/4, centred
    want = F.interpolate(centre, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got[2:, :, 1:-1, 1:-1], want[..., 1:-1, 1:-1])
    torch.testing.assert_close(random_crops(images, torch.rand(3, 3, generator=g), 0.0), images)


def test_random_crop_reaches_the_loss(tiny):
    """With sfsl.random_crop the extractor scores each sample's view, and needs the views."""
    pipe, _ = tiny
    vae, extractor = _frozen(pipe.vae), _frozen(Extractor())
    x0, reference = torch.randn(2, 4, 4, 4), torch.randn(3, extractor.dim)
    views = torch.tensor([[1.0, 0.0, 1.0], [0.3, 0.9, 0.2]])
    sfsl = SFSL(extractor, reference, 1.0, target="mean", random_crop=0.4)
    got = sfsl_loss(sfsl, vae, x0, None, views=views)
    with torch.no_grad():
        f = extractor(random_crops(decode_to_unit(vae, x0), views, 0.4))
        want = feature_distance(f, reference_for(f, reference, None, "mean", "cosine"), "cosine")
    assert torch.allclose(got, want.mean(), atol=1e-6)
    assert not torch.allclose(
        got, sfsl_loss(SFSL(extractor, reference, 1.0, "mean"), vae, x0, None)
    )
    with pytest.raises(ValueError, match="view"):
        sfsl_loss(sfsl, vae, x0, None)


def test_feature_distances():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    ref = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    assert torch.allclose(feature_distance(f, ref, "cosine"), torch.tensor([0.0, 2.0]))
    assert torch.allclose(feature_distance(f, ref, "l2"), torch.tensor([0.5, 4.5]))
    with pytest.raises(ValueError, match="distance"):
        feature_distance(f, ref, "l1")


def test_nearest_selection_is_not_differentiated():
    reference = torch.randn(4, 3)
    f = torch.randn(2, 3, requires_grad=True)
    target = reference_for(f, reference, None, "nearest", "cosine")
    assert not target.requires_grad
    feature_distance(f, target, "cosine").mean().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_timestep_ceiling_decodes_only_samples_under_it(tiny):
    pipe, _ = tiny
    vae, extractor = _frozen(pipe.vae), _frozen(Extractor())
    x0 = torch.randn(3, 4, 4, 4)
    reference = torch.randn(3, extractor.dim)
    sfsl = SFSL(extractor, reference, 1.0, max_timestep=500)
    before = extractor.calls
    none = sfsl_loss(sfsl, vae, x0, torch.tensor([600, 700, 999]), torch.tensor([0, 1, 2]))
    assert none.item() == 0.0 and extractor.calls == before  # nothing decoded, nothing extracted
    some = sfsl_loss(sfsl, vae, x0, torch.tensor([100, 700, 500]), torch.tensor([0, 1, 2]))
    only = sfsl_loss(
        SFSL(extractor, reference, 1.0),
        vae,
        x0[[0, 2]],
        torch.tensor([100, 500]),
        torch.tensor([0, 2]),
    )
    assert torch.allclose(some, only)


def test_decode_to_unit_range(tiny):
    pipe, _ = tiny
    images = decode_to_unit(_frozen(pipe.vae), torch.randn(2, 4, 4, 4) * 50)
    assert images.shape == (2, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    assert (images == 0).any() or (images == 1).any()  # large latents saturate: the clamp acted


def test_decode_size_resizes_the_decoded_image_not_the_latent(tiny):
    """The extractor sees the full decode resized (differentiably), not the decode of a resized
    latent (another image: cosine ~0.5 in feature space on `mini`, docs/sfsl.md)."""
    pipe, _ = tiny
    vae, extractor = _frozen(pipe.vae), _frozen(Extractor())
    decoded_shapes, seen = [], []
    real_decode, real_forward = vae.decode, extractor.forward
    vae.decode = lambda z, *a, **k: decoded_shapes.append(tuple(z.shape)) or real_decode(z, *a, **k)
    extractor.forward = lambda images: seen.append(images.detach()) or real_forward(images)
    try:
        x0 = torch.randn(2, 4, 8, 8, requires_grad=True)
        sfsl = SFSL(extractor, torch.randn(2, extractor.dim), 1.0, decode_size=32)
        sfsl_loss(sfsl, vae, x0, torch.tensor([1, 2]), torch.tensor([0, 1])).backward()
        full = SFSL(extractor, torch.randn(2, extractor.dim), 1.0, decode_size=64)
        sfsl_loss(full, vae, x0.detach(), torch.tensor([1, 2]), torch.tensor([0, 1]))
    finally:
        del vae.decode, extractor.forward
    assert decoded_shapes == [(2, 4, 8, 8), (2, 4, 8, 8)]  # always the whole latent
    with torch.no_grad():
        image = decode_to_unit(vae, x0)
    want = F.interpolate(image, size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(seen[0], want.clamp(0, 1))
    torch.testing.assert_close(seen[1], image)  # 64 px = full: as decoded
    assert x0.grad is not None and x0.grad.abs().sum() > 0


def _saved_bytes(fn, module):
    """Bytes autograd keeps for the backward pass (parameters excluded) and fn's result."""
    params = {id(p) for p in module.parameters()}
    saved = {}

    def pack(t):
        if id(t) not in params:
            saved[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(saved.values())


@pytest.mark.parametrize("part", ["unet", "vae"])
def test_training_attention_slicing_is_exact_and_saves_memory(part):
    """Query slices recomputed in backward: same output and gradients, less kept for backward."""
    from diffusers.models.attention_processor import AttnProcessor

    from spurcli.generate.modules import set_training_attention_slicing

    torch.manual_seed(0)
    pipe = build_tiny_pipeline()
    module = getattr(pipe, part).train()
    states = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    # 256 px: 256 tokens in the UNet's attention (after one downsampling), 256 in the VAE's
    x = torch.randn((1, 4, 32, 32) if part == "unet" else (1, 4, 16, 16), requires_grad=True)

    def run():
        if part == "unet":
            return module(x, torch.tensor([500]), states).sample
        return module.decode(x).sample

    results = {}
    for name in ("classic", "max", "auto"):
        if name == "classic":
            module.set_attn_processor(AttnProcessor())  # full attention matrices
        else:
            assert set_training_attention_slicing(module, name) == (128 if name == "max" else None)
        x.grad = None
        out, saved = _saved_bytes(run, module)
        out.square().mean().backward()
        results[name] = (out.detach(), x.grad.clone(), saved)
    for name in ("max", "auto"):
        assert torch.allclose(results[name][0], results["classic"][0], atol=1e-5)
        assert torch.allclose(results[name][1], results["classic"][1], atol=1e-6)
        assert results[name][2] < results["classic"][2], (name, results[name][2])
    with pytest.raises(Exception, match="attention slicing"):
        set_training_attention_slicing(module, "half")


def test_encoding_subtracts_the_vae_shift_that_decoding_adds():
    """SD3/Flux VAEs have a shift_factor: latents are (z - shift) * scale, so the decoder sees
    the encoder's z again (SD 1.x's shift is None: nothing changes)."""
    from spurcli.generate.training_data import Batch, LatentCache

    vae = _frozen(build_tiny_pipeline().vae)
    vae.register_to_config(shift_factor=0.25, scaling_factor=0.5)
    image = torch.rand(3, 32, 32) * 2 - 1
    batch = Batch(
        keys=[("instance", 0, 0, 0)],
        images=[image],
        instance_index=torch.tensor([0]),
        prompt_rows=torch.tensor([0]),
        noise=torch.zeros(1, 4, 4, 4),
        posterior_noise=torch.zeros(1, 4, 4, 4),  # the posterior mean itself
        timesteps=torch.tensor([0]),
        n_instance=1,
    )
    latents = LatentCache(vae, "cpu").latents(batch)
    with torch.no_grad():
        mean = vae.encode(image[None]).latent_dist.mean
        decoded = decode_to_unit(vae, latents)
        want = (vae.decode(mean).sample.clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(latents, (mean - 0.25) * 0.5)
    torch.testing.assert_close(decoded, want)


def test_noise_offset_adds_a_per_channel_constant_and_changes_no_other_draw(tmp_path):
    """--noise-offset (diffusers' --noise_offset): each sample's training noise gains offset x a
    draw per latent channel, constant over the image; images, crops, timesteps and the other
    noise are as without it, and 0 leaves the batch exactly as before."""
    from PIL import Image

    from spurcli.generate.training_data import TrainingData
    from tests._finetune_helpers import fast_config

    images = [Image.new("RGB", (40, 36), (i * 60, 90, 200)) for i in range(3)]

    def batch(offset: float):
        cfg = fast_config(tmp_path, tmp_path / "out", batch_size=2, noise_offset=offset)
        return TrainingData(images, [], cfg, rank=0, world=1, latent_channels=4).batch(3)

    plain, zero, offset = batch(0.0), batch(0.0), batch(0.5)
    assert torch.equal(plain.noise, zero.noise)
    for name in ("posterior_noise", "timesteps", "views"):
        assert torch.equal(getattr(plain, name), getattr(offset, name))
    assert all(torch.equal(a, b) for a, b in zip(plain.images, offset.images, strict=True))
    added = offset.noise - plain.noise  # (batch, channels, h, w)
    flat = added.flatten(2)
    assert torch.allclose(flat, flat[..., :1].expand_as(flat), atol=1e-6)  # constant per channel
    per_channel = flat[..., 0]
    assert per_channel.abs().min() > 0 and not torch.allclose(per_channel[0], per_channel[1])
