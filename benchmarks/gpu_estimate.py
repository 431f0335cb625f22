"""A paper estimate of `spurcli finetune` on a GPU at 512 px: memory and time per step.

    python benchmarks/gpu_estimate.py          # ~30 s on a CPU, no GPU, no download, no weights

Full fine-tuning first, then LoRA r=8 (`--lora-rank 8`) and taesd (`--sfsl-decoder taesd`).

Nothing here runs on a GPU. The models are built with SD 1.x's shapes on PyTorch's "meta" device
(shapes without data), then:

- FLOPs per step come from `torch.utils.flop_counter` on real forward and backward passes:
  UNet at batch 2 (instance + prior), CLIP text encoder, VAE decoder (SFSL: forward, and the
  backward to its input only: its weights are frozen) and ResNet-50 at 224 px.
- Activation memory is the bytes autograd saves for the backward pass (a saved-tensor hook),
  counted in fp32 and halved for fp16/bf16 autocast; attention is counted as a memory-efficient
  SDPA kernel keeps it (q, k, v, output), which is what torch 2 uses on CUDA.
- Time = FLOPs / (peak tensor throughput x utilisation). The utilisation (10%) is calibrated on
  one community report, not measured here (SD training mixes convolutions, GroupNorm and 40-dim
  attention heads: far from peak); ratios between configurations are more reliable than times.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

GB = 1e9
# Fraction of peak fp16 tensor throughput a DreamBooth step sustains, calibrated on a community
# report (github.com/TheLastBen/fast-stable-diffusion issue 2330): SD 1.5 at 640 px, batch 1,
# text encoder trained, RTX A5000 (111 TFLOPS fp16): 2.45 it/s x ~3.8 TFLOP = ~9 TFLOPS, 8%.
UTILISATION = 0.10
CARDS = {  # dense fp16/bf16 tensor TFLOPS (fp32 accumulate), memory
    "24 GB (RTX 4090)": (165e12, 24),
    "24 GB (A10)": (125e12, 24),
    "80 GB (A100 SXM)": (312e12, 80),
    "80 GB (H100 SXM)": (989e12, 80),
}


class _Attention(torch.autograd.Function):
    """SDPA as a memory-efficient kernel: keeps q, k, v and the output, not the N x N map."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _sdpa(q, k, v, *args, **kwargs):
    return _Attention.apply(q, k, v)


def _sdpa_flops(q, k, v):
    b, h, n, d = q.shape
    return 4 * b * h * n * k.shape[-2] * d  # QK^T and AV, 2 FLOPs per multiply-add


def measure(forward, params, grad_input=None):
    """(forward FLOPs, backward FLOPs, saved-for-backward bytes in fp32)."""
    ids = {id(p) for p in params}
    saved: dict[int, int] = {}

    def pack(t):
        if id(t) not in ids:
            saved[id(t)] = t.numel() * t.element_size()
        return t

    attention = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(q, k, v, *args, **kwargs):
        attention.append(_sdpa_flops(q, k, v))
        return _sdpa(q, k, v)

    torch.nn.functional.scaled_dot_product_attention = counted
    try:
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with hooks, FlopCounterMode(display=False) as fwd:
            out = forward()
        with FlopCounterMode(display=False) as bwd:
            out.float().sum().backward()
    finally:
        torch.nn.functional.scaled_dot_product_attention = real_sdpa
    attn = sum(attention)
    return fwd.get_total_flops() + attn, bwd.get_total_flops() + 2 * attn, sum(saved.values())


def models():
    import timm
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # SD 1.x
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
        )
        text = CLIPTextModel(
            CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                           num_hidden_layers=12, max_position_embeddings=77)
        )  # fmt: skip
        resnet = timm.create_model("resnet50", num_classes=0)
    return unet, vae, text, resnet


def main() -> None:
    unet, vae, text, resnet = models()
    count = {n: sum(p.numel() for p in m.parameters()) for n, m in
             (("unet", unet), ("text", text), ("vae", vae), ("resnet", resnet))}  # fmt: skip
    meta = {"device": "meta"}
    rows = {}
    ids = torch.zeros(2, 77, dtype=torch.long, **meta)
    rows["text encoder (2 prompts)"] = measure(lambda: text(ids)[0], list(text.parameters()))
    states = torch.randn(2, 77, 768, **meta)
    x, t = torch.randn(2, 4, 64, 64, **meta), torch.tensor([1, 2], **meta)
    rows["UNet, batch 2 (instance + prior)"] = measure(
        lambda: unet(x, t, states).sample, list(unet.parameters())
    )
    vae.requires_grad_(False)
    resnet.requires_grad_(False)
    for px in (512, 256):
        z = torch.randn(1, 4, px // 8, px // 8, requires_grad=True, **meta)
        rows[f"VAE decoder at {px} px (SFSL)"] = measure(
            lambda z=z: vae.decode(z).sample, list(vae.parameters())
        )
    image = torch.randn(1, 3, 224, 224, requires_grad=True, **meta)
    rows["ResNet-50 at 224 px (SFSL)"] = measure(lambda: resnet(image), list(resnet.parameters()))
    unet.enable_gradient_checkpointing()
    vae.enable_gradient_checkpointing()
    unet.train()
    _, _, unet_gc = measure(lambda: unet(x, t, states).sample, list(unet.parameters()))
    z = torch.randn(1, 4, 64, 64, requires_grad=True, **meta)
    _, _, vae_gc = measure(lambda: vae.decode(z).sample, list(vae.parameters()))

    print("Parameters: " + ", ".join(f"{n} {c / 1e6:.1f}M" for n, c in count.items()))
    print("\n| part | forward TFLOP | backward TFLOP | saved activations, fp16 GB |")
    print("| --- | --- | --- | --- |")
    for name, (f, b, s) in rows.items():
        print(f"| {name} | {f / 1e12:.3f} | {b / 1e12:.3f} | {s / 2 / GB:.2f} |")
    print(f"| UNet with gradient checkpointing | (+1 forward) | | {unet_gc / 2 / GB:.2f} |")
    print(f"| VAE decoder 512 px with checkpointing | (+1 forward) | | {vae_gc / 2 / GB:.2f} |")

    # memory
    trained = count["unet"] + count["text"]
    static = {
        "AdamW fp32": trained * (4 + 4 + 8),  # weights + grads + two moments
        "AdamW 8-bit": trained * (4 + 4 + 2),
    }
    frozen = (count["vae"] + count["resnet"]) * 2  # fp16
    casts = trained * 2  # autocast's fp16 copies of the fp32 weights during the step
    context = 1.0 * GB  # CUDA context, cuDNN/cuBLAS workspaces, allocator slack (rough)

    def acts(sfsl: bool, gc: bool) -> float:
        u = (unet_gc if gc else rows["UNet, batch 2 (instance + prior)"][2]) / 2
        v = (vae_gc if gc else rows["VAE decoder at 512 px (SFSL)"][2]) / 2
        r = rows["ResNet-50 at 224 px (SFSL)"][2] / 2
        return u + rows["text encoder (2 prompts)"][2] / 2 + (v + r if sfsl else 0)

    # torch's foreach AdamW needs one fp32 temporary per parameter during step() (sqrt of the
    # second moment); bitsandbytes' 8-bit AdamW updates block by block.
    step_temp = {"AdamW fp32": trained * 4, "AdamW 8-bit": 0}
    print("\nPeak memory at 512 px, batch 1 + 1 prior, text encoder trained, fp16 autocast (GB);")
    print("peak = max(forward/backward, optimizer step):")
    print("\n| optimizer | checkpointing | SFSL | weights+grads+optimizer | frozen | fp16 copies "
          "| activations | step temp | forward/backward | optimizer step | peak |")  # fmt: skip
    print("|" + " --- |" * 11)
    for opt, st in static.items():
        for gc in (False, True):
            for sfsl in (False, True):
                a = acts(sfsl, gc)
                fb = st + frozen + casts + a + context
                op = st + frozen + step_temp[opt] + context
                print(f"| {opt} | {'on' if gc else 'off'} | {'on' if sfsl else 'off'} | "
                      f"{st / GB:.1f} | {frozen / GB:.2f} | {casts / GB:.1f} | {a / GB:.1f} | "
                      f"{step_temp[opt] / GB:.1f} | {fb / GB:.1f} | {op / GB:.1f} | "
                      f"**{max(fb, op) / GB:.1f}** |")  # fmt: skip
    print(f"(every row includes {context / GB:.0f} GB for the CUDA context and allocator slack)")

    # time
    text_f = sum(rows["text encoder (2 prompts)"][:2])
    unet_f = sum(rows["UNet, batch 2 (instance + prior)"][:2])
    unet_fwd = rows["UNet, batch 2 (instance + prior)"][0]
    extractor = sum(rows["ResNet-50 at 224 px (SFSL)"][:2])
    vae = {px: rows[f"VAE decoder at {px} px (SFSL)"] for px in (512, 256)}
    text_fwd = rows["text encoder (2 prompts)"][0]
    configs = {}
    for gc in (False, True):
        # checkpointing recomputes each forward once more in the backward pass
        again = (unet_fwd + text_fwd) if gc else 0
        suffix = ", checkpointing" if gc else ""
        configs["SFSL off" + suffix] = text_f + unet_f + again
        # SFSL always decodes at full size (--sfsl-decode-size resizes the decoded image)
        sfsl = sum(vae[512][:2]) + extractor + (vae[512][0] if gc else 0)
        configs["SFSL on (decode 512 px)" + suffix] = text_f + unet_f + again + sfsl
    print(f"\nTime per step = FLOPs / ({UTILISATION:.0%} of peak); calibrated on one report, +-2x:")
    header = " | ".join(CARDS)
    print(f"\n| configuration | TFLOP/step | vs off | {header} |")
    print("| --- | --- | --- |" + " --- |" * len(CARDS))
    for name, flops in configs.items():
        off = configs["SFSL off, checkpointing" if "checkpointing" in name else "SFSL off"]
        times = " | ".join(f"{flops / (peak * UTILISATION) * 1000:.0f} ms" for peak, _ in
                           CARDS.values())  # fmt: skip
        print(f"| {name} | {flops / 1e12:.2f} | {flops / off:.2f}x | {times} |")
    lora_and_taesd(rows, count, context, vae_gc)


def lora_and_taesd(full: dict, count: dict, context: float, vae_gc: float, rank: int = 8) -> None:
    """The LoRA (`--lora-rank 8`) and taesd (`--sfsl-decoder taesd`) rows, measured the same way.

    LoRA: the UNet and text encoder frozen in fp16 (as `spurcli.generate.lora` keeps them),
    adapters on
    diffusers' LoRA script's targets; a frozen layer's backward computes only the input gradient,
    so the backward pass is cheaper, and it saves fewer activations. taesd's decoder is one
    checkpointed segment (its recomputation holds all of it again), so its activations count in
    full with or without checkpointing.
    """
    from diffusers import AutoencoderTiny
    from peft import LoraConfig

    from spurcli.generate.lora import TEXT_TARGETS, UNET_TARGETS

    unet, vae, text, resnet = models()

    def lora(targets):
        return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                          target_modules=targets)  # fmt: skip

    with torch.device("meta"):
        for model in (unet, text, vae, resnet):
            model.requires_grad_(False)
        unet.add_adapter(lora(UNET_TARGETS))
        from peft import inject_adapter_in_model

        inject_adapter_in_model(lora(TEXT_TARGETS), text)
        taesd = AutoencoderTiny().requires_grad_(False)  # taesd's own configuration
    adapters = sum(p.numel() for m in (unet, text) for p in m.parameters() if p.requires_grad)
    meta = {"device": "meta"}
    rows = {}
    ids = torch.zeros(2, 77, dtype=torch.long, **meta)
    states = torch.randn(2, 77, 768, **meta)
    x, t = torch.randn(2, 4, 64, 64, **meta), torch.tensor([1, 2], **meta)
    rows["text encoder, LoRA"] = measure(lambda: text(ids)[0], list(text.parameters()))
    rows["UNet, LoRA"] = measure(lambda: unet(x, t, states).sample, list(unet.parameters()))
    for px in (512, 256):
        z = torch.randn(1, 4, px // 8, px // 8, requires_grad=True, **meta)
        rows[f"taesd decoder at {px} px"] = measure(
            lambda z=z: taesd.decode(z).sample, list(taesd.parameters())
        )
    unet.enable_gradient_checkpointing()
    unet.train()
    _, _, unet_gc = measure(lambda: unet(x, t, states).sample, list(unet.parameters()))

    print(f"\nLoRA r={rank} and taesd (adapters: {adapters / 1e6:.2f}M parameters; taesd decoder "
          f"{sum(p.numel() for p in taesd.decoder.parameters()) / 1e6:.1f}M)")  # fmt: skip
    print("\n| part | forward TFLOP | backward TFLOP | saved activations, fp16 GB |")
    print("| --- | --- | --- | --- |")
    for name, (f, b, sv) in rows.items():
        print(f"| {name} | {f / 1e12:.3f} | {b / 1e12:.3f} | {sv / 2 / GB:.2f} |")
    print(f"| UNet, LoRA, gradient checkpointing | (+1 forward) | | {unet_gc / 2 / GB:.2f} |")

    # Peak memory: LoRA r=8, fp16, 512 px, batch 1 + 1 prior, text encoder trained.
    frozen = (count["unet"] + count["text"] + count["vae"] + count["resnet"]) * 2  # all fp16
    static = adapters * (4 + 4 + 8)  # fp32 adapters, their gradients, AdamW's moments
    resnet_acts = full["ResNet-50 at 224 px (SFSL)"][2] / 2
    text_acts = rows["text encoder, LoRA"][2] / 2
    print("\nPeak memory, LoRA, 512 px, fp16 autocast, text encoder trained (GB; frozen base in "
          "fp16):")  # fmt: skip
    print("\n| configuration | frozen weights | adapters+grads+AdamW | activations | **peak** |")
    print("| --- | --- | --- | --- | --- |")
    for gc in (False, True):
        u = unet_gc / 2 if gc else rows["UNet, LoRA"][2] / 2
        for decoder in ("none", "vae", "taesd"):
            if decoder == "none":
                dec = 0.0
            elif decoder == "vae":
                dec = (vae_gc if gc else full["VAE decoder at 512 px (SFSL)"][2]) / 2 + resnet_acts
            else:
                dec = rows["taesd decoder at 512 px"][2] / 2 + resnet_acts
            acts = u + text_acts + dec
            peak = frozen + static + acts + context
            label = f"LoRA, SFSL {'off' if decoder == 'none' else decoder}" + (
                ", checkpointing" if gc else "")  # fmt: skip
            print(f"| {label} | {frozen / GB:.2f} | {static / GB:.3f} | {acts / GB:.1f} | "
                  f"**{peak / GB:.1f}** |")  # fmt: skip
    print(f"(with {context / GB:.0f} GB for the CUDA context and allocator slack)")

    # FLOPs: SFSL's extra cost with each decoder, full fine-tuning and LoRA.
    extractor = sum(full["ResNet-50 at 224 px (SFSL)"][:2])
    decoders = {
        "vae": sum(full["VAE decoder at 512 px (SFSL)"][:2]),
        "taesd": sum(rows["taesd decoder at 512 px"][:2]),
    }
    bases = {
        "full": sum(full["text encoder (2 prompts)"][:2])
        + sum(full["UNet, batch 2 (instance + prior)"][:2]),
        f"LoRA r={rank}": sum(rows["text encoder, LoRA"][:2]) + sum(rows["UNet, LoRA"][:2]),
    }
    print("\nSFSL's cost by decoder (FLOPs per step, 512 px, no checkpointing):")
    print("\n| weights | SFSL decoder | TFLOP/step | vs SFSL off |")
    print("| --- | --- | --- | --- |")
    for name, base in bases.items():
        print(f"| {name} | (SFSL off) | {base / 1e12:.2f} | 1.00x |")
        for decoder, flops in decoders.items():
            total = base + flops + extractor
            print(f"| {name} | {decoder} | {total / 1e12:.2f} | {total / base:.2f}x |")


if __name__ == "__main__":
    main()
