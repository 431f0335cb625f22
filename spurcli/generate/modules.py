"""Helpers on the torch/diffusers modules every generation step uses: frozen parts cast to the
compute dtype, attention slicing (for sampling, and a version that saves memory in training),
and the libraries' own progress bars silenced."""

from __future__ import annotations

from typing import Any

from spurcli.errors import UsageError


def quiet_library_progress_bars() -> None:
    """Silence diffusers' and transformers' own load/save bars: spurcli draws its own on stderr."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def cast_frozen(module: Any, dtype: Any) -> Any:
    """``module.to(dtype)`` without diffusers' "keep in float32" hint (it is about loading)."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    if dtype == torch.float32 and all(p.dtype == dtype for p in module.parameters()):
        return module
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return module.to(dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def set_attention_slicing(module: Any, mode: str | int | None) -> None:
    """Attention slicing (the memory saver that needs no xformers) on a pipeline or a UNet.

    ``mode``: "auto" (half the heads at a time), "max" (one slice at a time), an int slice size,
    or "off"/None.
    """
    value: str | int | None
    if mode in (None, "off", "none"):
        value = None
    elif mode in ("auto", "max"):
        value = str(mode)
    else:
        try:
            value = int(mode)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UsageError(
                f"attention slicing must be auto, max, off or an int, not {mode!r}"
            ) from None
    if not hasattr(module, "set_attention_slice"):
        raise TypeError(f"{type(module).__name__} has no attention slicing")
    module.set_attention_slice(value)


def set_training_attention_slicing(module: Any, mode: str | int | None) -> int | None:
    """Attention slicing that saves memory in *training* too, on a UNet or a VAE.

    diffusers' sliced processor splits the batch x heads axis, which helps inference; in training
    autograd keeps every slice's attention matrix for the backward pass, so the peak stays (or
    grows). This one splits the query axis (so single-head VAE attention slices too) and, when
    gradients are on, recomputes each slice in the backward pass: at most one slice's
    queries x keys matrix exists at any time. Exact: softmax runs over keys, whole per query.

    ``mode``: "auto" (two slices), "max" (128 queries per slice), an int (queries per slice), or
    "off"/None (the default processor, SDPA: memory-efficient already on CUDA). Returns the
    queries per slice (None: two halves, or off).
    """
    if mode in (None, "off", "none"):
        return None
    if mode not in ("auto", "max"):
        try:
            size = int(mode)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise UsageError(f"attention slicing must be auto, max, off or an int, not {mode!r}")
    else:
        size = None if mode == "auto" else 128
    module.set_attn_processor(SlicedAttention(size))
    return size


class SlicedAttention:
    """A diffusers attention processor: queries in slices, each recomputed in backward."""

    def __init__(self, slice_size: int | None = None) -> None:
        self.slice_size = slice_size  # queries per slice; None: two halves

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        import torch
        from torch.utils.checkpoint import checkpoint

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image = hidden_states.ndim == 4  # the VAE's attention sees (B, C, H, W)
        if image:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, keys, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))

        def attend(q: Any, k: Any, v: Any, mask: Any) -> Any:
            return torch.bmm(attn.get_attention_scores(q, k, mask), v)

        n = query.shape[1]
        size = self.slice_size or -(-n // 2)
        recompute = torch.is_grad_enabled() and query.requires_grad
        parts = []
        for start in range(0, n, size):
            q = query[:, start : start + size]
            mask = attention_mask
            if mask is not None and mask.shape[1] > 1:
                mask = mask[:, start : start + size]
            if recompute:
                parts.append(checkpoint(attend, q, key, value, mask, use_reentrant=False))
            else:
                parts.append(attend(q, key, value, mask))
        hidden_states = attn.batch_to_head_dim(torch.cat(parts, dim=1))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, dropout
        if image:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
