"""`tiny`: a random Stable Diffusion 1.x in miniature, for tests and smoke runs.

    from spurcli.generate.tiny import build_tiny_pipeline
    pipe = build_tiny_pipeline()            # offline, ~0.1 s; the same weights everywhere
    image = pipe("a photo of sks flower", num_inference_steps=4, height=64, width=64).images[0]

It has the structure of Stable Diffusion 1.x (VAE with 8x downsampling and 4 latent channels, a
cross-attention UNet, a CLIP text encoder and a byte-level CLIP tokenizer) at a few hundred
thousand parameters, with weights drawn from fixed seeds, so it is the same model in every
process and on every machine. Its images are noise-like by design. `mini`
(`spurcli.generate.mini`) has the same UNet (`small_unet`) and text encoder, with trained weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def build_tiny_pipeline(seed: int = 0) -> Any:
    """The `tiny` Stable Diffusion: SD 1.x structure, a few hundred thousand parameters."""
    import torch
    from diffusers import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        # Same weights in every process: each component is drawn from its own fixed seed.
        torch.manual_seed(seed)
        unet = small_unet(sample_size=8)  # 64 px images / the VAE's 8x downsampling
        torch.manual_seed(seed + 1)
        # SD 1.x's shape: 4 levels (8x downsampling) and its latent scale
        vae = small_vae((8, 16, 32, 32), 4, 64, scaling_factor=0.18215)
        torch.manual_seed(seed + 2)
        vocab = tokenizer.get_vocab()
        end = vocab["<|endoftext|>"]
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=tokenizer.model_max_length,
                projection_dim=32,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=end,
                pad_token_id=end,
            )
        )
    # Stable Diffusion 1.x's noise schedule and default scheduler.
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    return assemble_pipeline(vae.eval(), text_encoder.eval(), tokenizer, unet.eval(), scheduler)


def assemble_pipeline(
    vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any
) -> Any:
    """A StableDiffusionPipeline of these parts, without a safety checker (nothing to download;
    its VAE scale factor and image processor follow from ``vae``)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_tokenizer() -> Any:
    """A CLIP tokenizer over single bytes (no merges): any prompt tokenizes, nothing to download."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory(prefix="spurcli-tiny-tokenizer-") as folder:
        # Written as files, the format every transformers version reads.
        vocab = {token: i for i, token in enumerate(tokens)}
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (byte-level BPE alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def small_unet(
    sample_size: int, latent_channels: int = 4, widths: tuple[int, int] = (32, 64)
) -> Any:
    """The UNet of `tiny` and `mini` (untrained): two levels, cross-attention on the second,
    conditioned on the 32-wide tiny text encoder; `widths` are the two levels' channels."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        layers_per_block=1,
        block_out_channels=widths,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,  # = the tiny text encoder's hidden size
        attention_head_dim=8,
        norm_num_groups=32,
    )


def small_vae(
    widths: tuple[int, ...], latent_channels: int, sample_size: int, scaling_factor: float
) -> Any:
    """A KL autoencoder of SD's shape (untrained), one block per level: each level after the
    first halves the side; one layer per block, 8 norm groups. tiny's, mini's and flag-mini's."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=widths,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )
