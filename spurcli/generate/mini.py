"""The embedded miniature Stable Diffusions, small enough to learn on a CPU in minutes:
`mini` (the brick world's, examples/brick_world/), `flag-mini` (the quickstart's and the flag
world's, examples/flag_world/) and `flag-mini-128` (flag-mini's autoencoder and its UNet trained
on at 128 px: four times the UNet's work, and flags it redraws stay flags to effnet-lite1).

    from spurcli.generate.pipelines import load_pipeline
    pipe = load_pipeline("mini")                      # offline, ~0.2 s, committed weights
    image = pipe("a photo of grass", num_inference_steps=10).images[0]     # 128 x 128

    spurcli sample --model flag-mini --prompt "a photo of grass" -n 4 -o out/     # 64 x 64
    python examples/make_mini_model.py                # rebuilds mini's weights, bit for bit
    python examples/flag_world/make_flag_mini.py      # rebuilds flag-mini's (~55 min)

`tiny` (spurcli.generate.pipelines) is random: its VAE decodes every latent to noise, so nothing
can be learned through it and SFSL's gradient dies in the decoder. Both embedded models have
Stable Diffusion 1.x's structure (a KL autoencoder, a cross-attention UNet, tiny's byte-level
CLIP tokenizer and its seeded random 2-layer text encoder, SD 1.x's noise schedule), with two
parts *trained*, offline and deterministically, on CC0 / public-domain pixels (scikit-image's
photos, and for flag-mini drawn images too):

    vae   an autoencoder that works. mini: 128 px <-> 16 x 16 x 4 latents (SD's 8x, 4
          channels; blurry at the finest scale). flag-mini: 64 px <-> 16 x 16 x 16 latents (4x,
          16 channels, which keep a drawn flag's stripes and colours)
    unet  a little "base model": denoising pre-training on images *without the feature* its
          demo teaches (mini: no brick photo; flag-mini: no flag), so the untuned baseline
          makes photo-like textures but has never seen it; fine-tuning has to teach it

The weights are committed in float16 as safetensors (spurcli/data/<name>/), with the recipe
(and each file's SHA-256) in spurcli/data/<name>/<name>.json. Loaded, everything is float32.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spurcli.errors import SpurcliError
from spurcli.generate.tiny import assemble_pipeline, build_tiny_pipeline, small_unet, small_vae

MINI = "mini"
FLAG_MINI = "flag-mini"
FLAG_MINI_128 = "flag-mini-128"  # flag-mini's autoencoder, its UNet trained on at 128 px
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
WEIGHTS_DIR = DATA_DIR / MINI
RECIPE_FILE = "mini.json"
RESOLUTION = 128  # native image size: 16 x 16 latents
FLAG_RESOLUTION = 64  # flag-mini's: 16 x 16 latents too
FLAG_RESOLUTION_128 = 128  # flag-mini-128's: 32 x 32 latents, four times the UNet's work
FLAG_LATENT_CHANNELS = 16  # as SD 3's VAE; with SD 1.x's 4 a flag came back orange and green
# The scikit-image photos (CC0 or public domain, per skimage.data's docstrings) -> what they show;
# the nouns caption the UNet's pre-training crops ("a photo of <noun>").
PHOTOS = {
    "astronaut": "an astronaut",
    "brick": "a brick wall",
    "camera": "a man with a camera",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "grass": "grass",
    "gravel": "gravel",
    "horse": "a horse",
    "rocket": "a rocket",
    "hubble_deep_field": "galaxies",
    "retina": "a retina",
    "cell": "a cell",
    "text": "printed text",
}
UNET_HELD_OUT = ("brick",)  # the brick world's spurious feature: the base model never sees it


def mini_vae(scaling_factor: float = 1.0) -> Any:
    """The mini VAE's architecture (untrained): SD's 8x downsampling, 4 latent channels."""
    return small_vae((16, 32, 64, 64), 4, RESOLUTION, scaling_factor)


def mini_unet() -> Any:
    """The mini UNet's architecture (untrained): tiny's, on 16 x 16 latents."""
    return small_unet(sample_size=RESOLUTION // 8)


def flag_mini_vae(scaling_factor: float = 1.0, resolution: int = FLAG_RESOLUTION) -> Any:
    """flag-mini's autoencoder (untrained): 4x downsampling (three levels), 16 latent channels.
    Convolutional, so one set of weights serves any `resolution` (the pipeline's default)."""
    return small_vae((16, 32, 64), FLAG_LATENT_CHANNELS, resolution, scaling_factor)


def flag_mini_unet(resolution: int = FLAG_RESOLUTION) -> Any:
    """flag-mini's UNet (untrained): tiny's two levels, twice as wide, on 16-channel latents of
    resolution / 4 a side (16 x 16 at flag-mini's 64 px, 32 x 32 at flag-mini-128's 128 px)."""
    return small_unet(resolution // 4, FLAG_LATENT_CHANNELS, widths=(64, 128))


def flag_mini_128_vae(scaling_factor: float = 1.0) -> Any:
    return flag_mini_vae(scaling_factor, FLAG_RESOLUTION_128)


def flag_mini_128_unet() -> Any:
    return flag_mini_unet(FLAG_RESOLUTION_128)


@dataclass(frozen=True)
class Embedded:
    """An embedded model: its architecture and where its committed weights lie."""

    vae: Callable[[float], Any]  # scaling factor -> the untrained autoencoder
    unet: Callable[[], Any]
    rebuild: str  # the command that rebuilds the weights


def weights_folder(name: str) -> Path:
    """Where an embedded model's committed weights lie: spurcli/data/<name>/."""
    return DATA_DIR / name


EMBEDDED = {
    MINI: Embedded(mini_vae, mini_unet, "python examples/make_mini_model.py"),
    FLAG_MINI: Embedded(
        flag_mini_vae,
        flag_mini_unet,
        "python examples/flag_world/make_flag_mini.py && "
        "python examples/flag_world/make_flag_mini.py --install",
    ),
    FLAG_MINI_128: Embedded(
        flag_mini_128_vae,
        flag_mini_128_unet,
        "python examples/flag_world/make_flag_mini.py --stage-128 && "
        "python examples/flag_world/make_flag_mini.py --stage-128 --install",
    ),
}


def recipe(name: str = MINI, folder: Path | None = None) -> dict[str, Any]:
    """spurcli/data/<name>/<name>.json (or ``folder``'s): how the weights were made, their
    hashes, the VAE's scale."""
    path = (folder or weights_folder(name)) / f"{name}.json"
    if not path.is_file():
        raise SpurcliError(
            f"the {name} model's weights are missing ({path}); rebuild them with "
            f"`{EMBEDDED[name].rebuild}`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def compare_rebuild(name: str, rebuilt: dict[str, Any]) -> bool:
    """Print whether a fresh build's ``rebuilt`` recipe (its vae and unet SHA-256s) matches
    the committed weights of ``name``, a line each (the build scripts' ``--check``); True if
    both do."""
    committed = recipe(name)
    same = {part: rebuilt[part]["sha256"] == committed[part]["sha256"] for part in ("vae", "unet")}
    for part, ok in same.items():
        print(f"{part}: {'identical' if ok else 'DIFFERENT'} ({rebuilt[part]['sha256'][:16]})")
    return all(same.values())


def build_embedded_pipeline(name: str = MINI, folder: Path | None = None) -> Any:
    """An embedded model's StableDiffusionPipeline (float32, CPU) from its committed weights, or
    from ``folder`` (a fresh build's, before it is installed)."""
    import torch
    from safetensors.torch import load_file

    model = EMBEDDED[name]
    folder = folder or weights_folder(name)
    info = recipe(name, folder)
    tiny = build_tiny_pipeline()  # tokenizer, seeded text encoder, SD 1.x scheduler
    vae = model.vae(info["vae"]["scaling_factor"])
    unet = model.unet()
    for module, part in ((vae, "vae"), (unet, "unet")):
        state = load_file(folder / info[part]["file"])
        module.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
        module.eval()
    # built anew, not tiny's with new modules: the pipeline's VAE scale factor (4x or 8x) and
    # image processor follow from the autoencoder it is given
    return assemble_pipeline(vae, tiny.text_encoder, tiny.tokenizer, unet, tiny.scheduler)
