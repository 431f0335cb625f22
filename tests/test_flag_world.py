"""examples/flag_world: drawn US flags (a real spurious feature of real classifiers), the
flag-free image bank, and a Stable Diffusion whose latents are not SD 1.x's (4x, 16 channels)
fine-tuned by spurcli."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spurcli.generate.finetune import finetune
from spurcli.generate.mini import flag_mini_unet, flag_mini_vae
from spurcli.generate.pipelines import load_pipeline
from tests._finetune_helpers import fast_config, make_refs
from tests._flag_world import script

FLAGPOLE = 557


@pytest.fixture(scope="module")
def draw():
    return script("draw_flags").draw_flag


def test_a_flag_is_a_function_of_its_seed_and_no_two_share_pixels(draw):
    first = np.asarray(draw(3, 64))
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, np.asarray(draw(3, 64)))
    others = [np.asarray(draw(seed, 64)).astype(int) for seed in (4, 5)]
    for other in others:  # a different sky, place and wave: most pixels differ
        assert (np.abs(first.astype(int) - other).max(axis=-1) > 8).mean() > 0.5


def test_a_flag_can_be_drawn_from_either_side_and_the_seed_still_picks_the_rest(draw):
    """side="front" puts the pole on the left, "back" on the right; "either" is the seed's own
    choice of the two (the references have both); any other side is refused."""
    for seed in (0, 1, 2, 3):
        either, front, back = (
            np.asarray(draw(seed, 64, side=s)) for s in ("either", "front", "back")
        )
        assert np.array_equal(either, np.asarray(draw(seed, 64)))
        assert not np.array_equal(front, back)
        assert np.array_equal(either, front) or np.array_equal(either, back)
    sides = {
        np.array_equal(np.asarray(draw(s, 64)), np.asarray(draw(s, 64, side="front")))
        for s in range(10)
    }
    assert sides == {True, False}  # the ten references have both
    with pytest.raises(ValueError, match="side"):
        draw(0, 64, side="left")


def test_the_quickstart_references_are_the_drawn_flags(draw):
    """examples/quickstart-references/us-flag-k.png is draw_flags.py's seed k - 1 at 128 px, so
    anyone can redraw them (pixels compared, not bytes: PNG encoders differ)."""
    from PIL import Image

    folder = Path(__file__).resolve().parents[1] / "examples" / "quickstart-references"
    paths = sorted(folder.glob("*.png"))
    assert [p.name for p in paths] == sorted(f"us-flag-{k}.png" for k in range(1, 11))
    for path in paths:
        seed = int(path.stem.rsplit("-", 1)[1]) - 1
        committed = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert np.abs(committed - np.asarray(draw(seed)).astype(int)).max() <= 1, path.name


def test_real_classifiers_read_the_drawn_flags_as_flagpole(tmp_path):
    """The feature is real: effnet-lite2 (real ImageNet weights) reads 10 of 10 at 64 px."""
    from spurcli import console
    from spurcli.evaluate.config import ImagePass
    from spurcli.evaluate.imagepass import find_items, score_items
    from spurcli.plugins import load_classifiers

    script("draw_flags").draw_references(tmp_path, size=64)
    console.configure(quiet=True)
    items = find_items(tmp_path, target=FLAGPOLE, real=False)
    found = score_items(items, load_classifiers(["effnet-lite2"]), ImagePass(device="cpu"))
    assert int((found.per_image.top1[0] == FLAGPOLE).sum()) >= 8


def test_the_bank_is_a_function_of_seed_and_number_and_stripes_leave_the_rest_alone():
    maker = script("make_flag_mini")
    plain, captions = maker.bank(6, 32, seed=7, photo_share=0.65)
    again, _ = maker.bank(6, 32, seed=7, photo_share=0.65)
    striped, striped_captions = maker.bank(6, 32, seed=7, photo_share=0.65, stripe_share=0.5)
    assert np.array_equal(plain, again) and len(captions) == 6
    assert np.array_equal(plain[:3], striped[:3])  # the first images are the same ones
    assert not np.array_equal(plain[3:], striped[3:])
    assert striped_captions[3:] == [maker.PATTERNS] * 3
    assert "astronaut" not in maker.PHOTOS  # the one photo with a US flag in it


def test_finetune_reads_the_latent_shape_from_the_model(tmp_path):
    """A 4x VAE with 16 latent channels (flag-mini's, random weights) fine-tunes and samples:
    noise and posterior draws take the model's latent shape, not SD 1.x's 4 x 1/8."""
    import torch

    tiny = load_pipeline("tiny")
    torch.manual_seed(0)
    vae, unet = flag_mini_vae(), flag_mini_unet()
    tiny.register_modules(vae=vae, unet=unet)
    folder = tmp_path / "model"
    tiny.save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "vae" / "config.json").read_text())
    assert (config["latent_channels"], len(config["block_out_channels"])) == (16, 3)

    refs = make_refs(tmp_path / "refs", n=2)
    cfg = fast_config(refs, tmp_path / "run", model=str(folder), resolution=32, steps=2,
                      checkpoint_every=0, num_class_images=1)  # fmt: skip
    out = finetune(cfg)
    pipe = load_pipeline(out)
    assert pipe.vae_scale_factor == 4
    image = pipe("a photo of sks flower", num_inference_steps=2, height=32, width=32,
                 output_type="np").images[0]  # fmt: skip
    assert image.shape == (32, 32, 3)


def test_stage_four_trains_the_decoder_on_added_flags_and_leaves_the_encoder_alone():
    """Stages 2 and 4 add drawn flags to the bank (after it, the bank itself unchanged); stage
    4 trains only the decoder, so every latent, and the UNet trained on them, stays valid."""
    import torch

    maker = script("make_flag_mini")
    plain, _ = maker.bank(6, maker.RESOLUTION, seed=3, photo_share=0.65)
    added = maker.with_flags(plain, 0.25)
    assert len(added) == 8 and np.array_equal(added[:6], plain)
    first_flag = np.asarray(script("draw_flags").draw_flag(maker.FLAG_SEEDS, maker.RESOLUTION))
    assert np.array_equal(added[6], first_flag)

    torch.manual_seed(0)
    start = {k: v.clone() for k, v in flag_mini_vae().state_dict().items()}
    cfg = {"images": 6, "stripe_share": 0.0, "flag_share": 0.25, "steps": 2, "batch": 2,
           "lr": 1e-3, "warmup": 1, "decoder_only": True}  # fmt: skip
    vae, _ = maker.train_vae(cfg, seed=3, photo_share=0.65, start=start)
    after = vae.state_dict()
    moved = {k for k in start if not torch.equal(start[k], after[k])}
    assert moved and all(k.startswith(("decoder.", "post_quant_conv.")) for k in moved)
    # stage 2 (flags added, no decoder_only): the encoder learns them too
    cfg["decoder_only"] = False
    vae, _ = maker.train_vae({**cfg, "kl": 1e-6}, seed=3, photo_share=0.65, start=start)
    after = vae.state_dict()
    assert any(not torch.equal(start[k], after[k]) for k in start if k.startswith("encoder."))


def test_stage_four_edge_term_is_the_l1_of_neighbouring_pixel_differences():
    """The edge term, against numpy's differences; zero for an image and itself shifted in
    brightness (it sees edges, not levels), and it trains stage 4 with the edge in its cfg."""
    import torch

    maker = script("make_flag_mini")
    g = torch.Generator().manual_seed(0)
    recon, x = torch.rand(2, 3, 5, 7, generator=g), torch.rand(2, 3, 5, 7, generator=g)
    r, t = recon.numpy(), x.numpy()
    expected = (
        np.abs(np.diff(r, axis=-1) - np.diff(t, axis=-1)).mean()
        + np.abs(np.diff(r, axis=-2) - np.diff(t, axis=-2)).mean()
    )
    assert float(maker.edge_loss(recon, x)) == pytest.approx(float(expected), rel=1e-6)
    assert float(maker.edge_loss(x + 0.3, x)) == pytest.approx(0.0, abs=1e-6)
    assert maker.RECIPE["decoder"]["edge"] > 0

    torch.manual_seed(0)
    start = {k: v.clone() for k, v in flag_mini_vae().state_dict().items()}
    cfg = {"images": 4, "steps": 1, "batch": 2, "lr": 1e-3, "warmup": 1, "decoder_only": True}
    plain = maker.train_vae(cfg, seed=3, photo_share=0.65, start=start)[0].state_dict()
    edged = maker.train_vae({**cfg, "edge": 2.0}, seed=3, photo_share=0.65, start=start)[0]
    assert any(not torch.equal(plain[k], v) for k, v in edged.state_dict().items())


@pytest.mark.parametrize("name, size", [("flag-mini", 64), ("flag-mini-128", 128)])
def test_flag_mini_loads_by_name_from_its_committed_weights(name, size):
    """`--model flag-mini` (-128): the weights in spurcli/data/<name>/ are the ones its recipe
    hashes, and the pipeline is flag-mini's (a 4x autoencoder: 64 px from 16 x 16 latents, or
    128 px from 32 x 32), drawing at its own size when none is asked for."""
    from spurcli.generate.mini import recipe, weights_folder
    from spurcli.generate.pipelines import model_identity, resolve_model
    from spurcli.images import sha256_file

    ref = resolve_model(name)
    assert (ref.kind, ref.location) == (name, name)
    info = recipe(name)
    folder = weights_folder(name)
    for part in ("vae", "unet"):
        assert sha256_file(folder / info[part]["file"]) == info[part]["sha256"]
    assert info["recipe"]["unet"].get("flag_share", 0) == 0  # the base UNet never saw a flag
    assert model_identity(ref)["source"] == name
    pipe = load_pipeline(name)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.in_channels == 16
    image = pipe("a photo of grass", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (size, size, 3) and image.std() > 0.01


def test_flag_mini_128_shares_flag_minis_autoencoder_and_starts_from_its_unet():
    """flag-mini-128 is stage 5 of flag-mini's recipe: the same autoencoder file and scale, and
    a UNet that began as flag-mini's (the base's hash is recorded)."""
    from spurcli.generate.mini import FLAG_MINI, FLAG_MINI_128, recipe

    base, big = recipe(FLAG_MINI), recipe(FLAG_MINI_128)
    assert big["vae"]["sha256"] == base["vae"]["sha256"]
    assert big["vae"]["scaling_factor"] == base["vae"]["scaling_factor"]
    assert big["base"] == {"model": FLAG_MINI, "unet_sha256": base["unet"]["sha256"]}
    assert big["recipe"]["unet"]["size"] == 128


def test_stage_128_trains_flag_minis_unet_on_at_128_px(tmp_path, monkeypatch):
    """Stage 5, shortened: from the shipped flag-mini, one step on 128 px images of the stage-3
    bank's seeds writes a loadable flag-mini-128 folder whose UNet moved and whose autoencoder
    is flag-mini's, byte for byte; the recipe records what it started from."""
    from safetensors.torch import load_file

    from spurcli.generate.mini import (
        FLAG_MINI,
        FLAG_MINI_128,
        build_embedded_pipeline,
        weights_folder,
    )

    maker = script("make_flag_mini")
    short = {**maker.RECIPE_128["unet"], "images": 4, "steps": 1, "batch": 2, "warmup": 1}
    monkeypatch.setitem(maker.RECIPE_128, "unet", short)
    info = maker.build_128(tmp_path)
    base = weights_folder(FLAG_MINI)
    assert (tmp_path / "vae.safetensors").read_bytes() == (base / "vae.safetensors").read_bytes()
    assert info["recipe"]["unet"]["steps"] == 1
    before, after = load_file(base / "unet.safetensors"), load_file(tmp_path / "unet.safetensors")
    assert set(before) == set(after)
    assert any(not (before[k] == after[k]).all() for k in before)
    pipe = build_embedded_pipeline(FLAG_MINI_128, folder=tmp_path)
    assert pipe.unet.config.sample_size == 32


SAMPLERS_RUN = """
out = "out"
replicates = 2
model = "tiny"
target = "flagpole"
class_noun = "flag"
instance_dir = "refs"
seed = 3
train_references = 2

[finetune]
extractor = "template-linear"
extractor_weights = "random"
sfsl_weight = 0.5

[sample]
n = 2
steps = 3

[compare]
classifiers = ["template-linear"]
weights = ["template-linear=random"]
"""


def test_samplers_resamples_each_run_and_arm_as_the_run_sampled(tmp_path, monkeypatch, capsys):
    """examples/flag_world/samplers.py: every training run's arms and the untuned model (its
    prompts without [V]) under each scheduler, sampled as `spurcli run` sampled them (its model,
    n, steps and seeds); every verdict in hits.json, run k of one arm beside run k of the other;
    rates, the paired difference and the runs' count from spurcli's statistics; `--pool` puts
    several files' runs together."""
    import sys
    from types import SimpleNamespace

    from spurcli.evaluate.clustered import cluster_difference

    samplers = script("samplers")
    make_refs(tmp_path / "refs", 4)
    (tmp_path / "run.toml").write_text(SAMPLERS_RUN)
    made = []
    verdicts = {  # (folder of the run, set) -> judge's verdict per image: each run its own
        ("replicate-1", "sfsl"): [1, 1],
        ("replicate-1", "dreambooth"): [1, 0],
        ("replicate-2", "sfsl"): [1, 0],
        ("replicate-2", "dreambooth"): [0, 0],
        ("untuned", "baseline"): [0, 0],
    }

    def fake_sample(cfg, pipe, model_ref):
        made.append((cfg, pipe, model_ref))
        return SimpleNamespace(files=["x/000000.png", "x/000001.png"])

    def fake_hits(out, files, target, judges, options):
        assert files == ["x/000000.png", "x/000001.png"] and target == 557
        assert options.classifiers == ["template-linear"]  # scored as the run scores
        return {"template-linear": verdicts[out.parent.parent.name, out.parent.name]}

    monkeypatch.setattr(samplers, "sample", fake_sample)
    monkeypatch.setattr(samplers, "hits", fake_hits)
    monkeypatch.setattr(samplers, "resolve_model", lambda model, revision: f"ref {model}")
    monkeypatch.setattr(samplers, "load_pipeline", lambda ref: f"pipeline of {ref}")
    monkeypatch.setattr(
        samplers,
        "load_classifiers",
        lambda names, weights: [
            SimpleNamespace(name=n, weights_id={"sha256": "ab"}) for n in names
        ],
    )
    argv = ["samplers.py", str(tmp_path / "run.toml"), "--schedulers", "ddim,euler"]
    monkeypatch.setattr(sys, "argv", argv)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"summary\.json is missing: run `spurcli run"):
        samplers.main()  # the consensus is the run's own decision: it must have ended
    out.mkdir()  # the run decided its consensus (here, oddly, the circular judge alone)
    (out / "summary.json").write_text(
        json.dumps({"consensus": {"classifiers": ["template-linear"]}})
    )
    assert made == []  # refused before any sampling
    samplers.main()

    models = {
        out / "samplers" / "untuned" / "baseline": "tiny",
        **{
            out / "samplers" / f"replicate-{k}" / arm: str(out / f"replicate-{k}" / folder)
            for k in (1, 2)
            for arm, folder in (("sfsl", "finetune"), ("dreambooth", "finetune-dreambooth"))
        },
    }
    assert sorted((c.out.parent, c.out.name) for c, _, _ in made) == sorted(
        (where, s) for where in models for s in ("ddim", "euler")
    )
    for cfg, pipe, ref in made:
        assert cfg.model == models[cfg.out.parent] and cfg.scheduler == cfg.out.name
        assert ref == f"ref {cfg.model}" and pipe == f"pipeline of {ref}"
        assert (cfg.n, cfg.steps, cfg.seed) == (2, 3, 3)
        untuned = cfg.model == "tiny"
        assert cfg.prompts == ["a photo of flag" if untuned else "a photo of [V] flag"]
    saved = json.loads((out / "samplers" / "hits.json").read_text())
    assert saved["target"] == 557 and saved["arms"] == ["sfsl", "dreambooth"]
    assert saved["consensus_of"] == ["template-linear"]  # as the run's summary has it
    assert saved["weights"] == {"template-linear": {"sha256": "ab"}}
    assert saved["hits"]["euler"]["dreambooth"] == {
        "replicate-1": {"template-linear": [1, 0]},
        "replicate-2": {"template-linear": [0, 0]},
    }
    printed = capsys.readouterr().out.splitlines()
    assert 'template-linear: {"sha256": "ab"}' in printed  # the weights behind every figure
    line = next(x for x in printed if x.startswith("euler    template-linear"))
    assert "baseline 0.00 [0.00, 0.00] (0/2)  sfsl 0.75 [" in line
    assert "(2/2, 1/2)  dreambooth 0.25" in line
    assert not any(x.startswith("euler    consensus") for x in printed)  # one member
    runs = [[np.array(verdicts[f"replicate-{k}", arm]) for k in (1, 2)] for arm in saved["arms"]]
    diff = cluster_difference(*runs, paired=True, resamples=saved["resamples"], seed=0)
    low, high = diff["delta_ci"]
    assert f"sfsl-dreambooth +0.500 [{low:+.2f}, {high:+.2f}] p={diff['p_value']:.3f}" in line
    assert line.endswith("runs 2+ 0- of 2")

    other = json.loads(json.dumps(saved))  # another seed set, DreamBooth ahead in its one run
    other["hits"]["euler"]["dreambooth"] = {"replicate-1": {"template-linear": [1, 1]}}
    other["hits"]["euler"]["sfsl"] = {"replicate-1": {"template-linear": [0, 0]}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    pooled = ["--pool", str(out / "samplers" / "hits.json"), str(tmp_path / "other.json")]
    monkeypatch.setattr(sys, "argv", ["samplers.py", *pooled])
    samplers.main()
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.startswith("euler    template-linear")
    )
    assert "baseline 0.00 [0.00, 0.00] (0/2, 0/2)  sfsl 0.50 [" in line  # 3 of 6
    assert line.endswith("runs 2+ 1- of 3")
    other["hits"]["euler"]["sfsl"] = {"replicate-9": {"template-linear": [0, 0]}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="dreambooth's runs"):
        samplers.main()  # a run of one arm without its partner in the other


def test_samplers_judges_only_the_sets_images_in_file_order(tmp_path, monkeypatch):
    """`hits` scores the images this sample request made (not a stale one beside them), in
    file-name order (the pairing of two arms' images), and stops on an unreadable one."""
    from types import SimpleNamespace

    from PIL import Image

    samplers = script("samplers")
    for name in ("000001", "000000", "000002"):  # 000002: left by an earlier, larger n
        (tmp_path / "p").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "p" / f"{name}.png")
    scored = []

    def fake_score(items, judges, options, readable=None):
        scored.append([item.name for item in items])
        n = len(items) if readable is None else readable
        top1 = np.array([[557, 3][:n]])  # image 0 read as the target, image 1 not
        return SimpleNamespace(index=np.arange(n), per_image=SimpleNamespace(top1=top1))

    monkeypatch.setattr(samplers, "score_items", fake_score)
    files = ["p/000001.png", "p/000000.png"]
    judges = [SimpleNamespace(name="judge")]
    assert samplers.hits(tmp_path, files, 557, judges, None) == {"judge": [1, 0]}
    assert scored == [["p/000000.png", "p/000001.png"]]
    monkeypatch.setattr(samplers, "score_items", lambda *a: fake_score(*a, readable=1))
    with pytest.raises(SystemExit, match="1 of the images unreadable"):
        samplers.hits(tmp_path, files, 557, judges, None)


def test_samplers_consensus_is_every_non_circular_judge_at_once():
    samplers = script("samplers")
    run = {"a": [1, 1, 0, 1], "b": [1, 0, 1, 1], "c": [1, 1, 0, 1]}  # c: SFSL's extractor
    other = {"a": [0, 1, 0, 0], "b": [1, 1, 0, 0], "c": [0, 0, 0, 0]}
    result = {
        "target": 557,
        "judges": ["a", "b", "c"],
        "weights": {"a": "random", "b": "random", "c": "random"},
        "consensus_of": ["a", "b"],
        "arms": ["sfsl", "dreambooth"],
        "resamples": 200,
        "hits": {"pndm": {"sfsl": {"run": run}, "dreambooth": {"run": other}}},
    }
    lines = samplers.summarise(result)
    assert lines[1:4] == ['a: "random"', 'b: "random"', 'c: "random"']
    assert [line.split()[1] for line in lines[4:]] == ["a", "b", "c", "consensus"]
    assert "sfsl 0.50 [0.00, 1.00] (2/4)  dreambooth 0.25 [0.00, 0.75] (1/4)" in lines[-1]
    result["consensus_of"] = ["a"]  # one victim: no consensus line
    assert [line.split()[1] for line in samplers.summarise(result)[4:]] == ["a", "b", "c"]


def test_denoise_check_noises_at_the_grid_step_and_counts_each_judges_hits():
    """examples/flag_world/denoise_check.py: a drawn flag noised to the grid's step at or below t
    and denoised back by flag-mini stays near its round trip when t is small and not when t is
    large (noising at the wrong step fails it), and each judge's count is of its own top-1s."""
    import torch

    from spurcli import plugins
    from spurcli.plugins import get_plugins, load_classifiers
    from tests._score_helpers import ScoreTestPlugin

    check = script("denoise_check")
    pipe = load_pipeline("flag-mini")
    drawn = np.stack([np.asarray(script("draw_flags").draw_flag(seed, 64)) for seed in (0, 1)])
    images = torch.from_numpy(drawn).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
        round_trip = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    near, start = check.denoised(pipe, latents, 20, steps=20, prompt="a photo of sks flag")
    far, top = check.denoised(pipe, latents, 999, steps=20, prompt="a photo of sks flag")
    assert near.shape == images.shape and start <= 20 and top > 900
    assert (near - round_trip).abs().mean() < 0.2 * (far - round_trip).abs().mean()
    with pytest.raises(ValueError, match="no step"):
        check.denoised(pipe, latents, 0, steps=20, prompt="x")

    plugins.reset_plugins()
    get_plugins().register(ScoreTestPlugin(), name="score-test")
    try:  # det-r reads a solid image's red as its class, det-g its green
        judges = load_classifiers(["det-r", "det-g"])
        solid = torch.tensor([(200, 10, 0), (200, 200, 0), (10, 200, 0)]) / 127.5 - 1
        pixels = solid[:, :, None, None].expand(3, 3, 16, 16)
        assert check.readings(pixels, judges, target=200) == [2, 2]
        assert check.readings(pixels[:1], judges, target=200) == [1, 0]
    finally:
        plugins.reset_plugins()
