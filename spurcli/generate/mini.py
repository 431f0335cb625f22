"""`mini`: the quickstart's embedded Stable Diffusion, small enough to learn on a CPU in minutes.

    from spurcli.generate.pipelines import load_pipeline
    pipe = load_pipeline("mini")                      # offline, ~0.2 s, committed weights
    image = pipe("a photo of grass", num_inference_steps=10).images[0]     # 128 x 128

    spurcli sample --model mini --prompt "a photo of gravel" -n 4 -o out/
    python examples/make_mini_model.py                # rebuilds the weights, bit for bit

`tiny` (spurcli.generate.pipelines) is random: its VAE decodes every latent to noise, so nothing
can be
learned through it and SFSL's gradient dies in the decoder. `mini` has the same Stable Diffusion
1.x structure (a VAE with 8x downsampling and 4 latent channels, a cross-attention UNet, tiny's
byte-level CLIP tokenizer and its seeded random 2-layer text encoder), 128 px native, with two
parts *trained*, offline and deterministically, by examples/make_mini_model.py on crops of the
CC0 / public-domain photos bundled with scikit-image:

    vae   an autoencoder that works: 128 px <-> 16 x 16 x 4 latents (reconstructions are blurry
          at the finest scale but keep the photos' colours, edges and textures)
    unet  a little "base model": denoising pre-training on the same photos' crops *without the
          brick photo*, so the untuned baseline makes photo-like textures but has never seen
          the quickstart's brick walls; fine-tuning (DreamBooth + SFSL) has to teach them

The weights are committed in float16 as safetensors (spurcli/data/mini/, ~3 MB), with the
recipe (and each file's SHA-256) in spurcli/data/mini/mini.json. Loaded, everything is float32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spurcli.errors import SpurcliError
from spurcli.generate.tiny import build_tiny_pipeline, small_unet

MINI = "mini"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "data" / "mini"
RECIPE_FILE = "mini.json"
RESOLUTION = 128  # native image size: 16 x 16 latents
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
UNET_HELD_OUT = ("brick",)  # the quickstart's spurious feature: the base model never sees it


def mini_vae(scaling_factor: float = 1.0) -> Any:
    """The mini VAE's architecture (untrained): SD's 8x downsampling, 4 latent channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=RESOLUTION,
        scaling_factor=scaling_factor,
    )


def mini_unet() -> Any:
    """The mini UNet's architecture (untrained): tiny's, on 16 x 16 latents."""
    return small_unet(sample_size=RESOLUTION // 8)


def recipe() -> dict[str, Any]:
    """spurcli/data/mini/mini.json: how the weights were made, their hashes, the VAE's scale."""
    path = WEIGHTS_DIR / RECIPE_FILE
    if not path.is_file():
        raise SpurcliError(
            f"the mini model's weights are missing ({path}); rebuild them with "
            "`python examples/make_mini_model.py`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def build_mini_pipeline() -> Any:
    """The `mini` StableDiffusionPipeline (float32, CPU) from the committed weights."""
    import torch
    from safetensors.torch import load_file

    info = recipe()
    pipe = build_tiny_pipeline()  # tokenizer, seeded text encoder, SD 1.x scheduler
    vae = mini_vae(info["vae"]["scaling_factor"])
    unet = mini_unet()
    for module, name in ((vae, "vae"), (unet, "unet")):
        state = load_file(WEIGHTS_DIR / info[name]["file"])
        module.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
        module.eval()
    pipe.register_modules(vae=vae, unet=unet)  # same 8x VAE factor as tiny's: nothing else changes
    return pipe
