"""The non-finite guard: weights with a NaN or an infinity are never trained on, saved or sampled.

    from spurcli.finite import all_finite, check_model_finite
    all_finite(model.parameters())           # one fused pass: False if any value is NaN or inf
    check_model_finite({"unet": pipe.unet}, "runs/a/pipeline")   # SpurcliError naming the part

A NaN anywhere in a tensor makes its norm NaN and an infinity makes it inf, so the sum of the
per-tensor norms (``torch.nn.utils.get_total_norm``: one foreach kernel over all tensors, the
cost of a fraction of an optimizer step) is finite exactly when every value is (fp32 weights;
half-precision ones are checked value by value). Weights so large
that their squares overflow float32 (|w| > 1e19) count as non-finite too: they are as broken.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from spurcli.errors import SpurcliError


def all_finite(tensors: Iterable[Any]) -> bool:
    """True when no value of ``tensors`` is NaN or infinite (empty: True)."""
    import torch

    wide, narrow = [], []
    for t in tensors:
        if t.is_floating_point():
            (wide if t.dtype in (torch.float32, torch.float64) else narrow).append(t.detach())
    # fp16/bf16 norms overflow on healthy weights (65504 is fp16's largest value): check those
    # value by value instead; they are only ever frozen or inference weights, checked once.
    if any(not torch.isfinite(t).all().item() for t in narrow):
        return False
    return not wide or bool(torch.isfinite(torch.nn.utils.get_total_norm(wide, foreach=True)))


def check_model_finite(parts: Mapping[str, Any], where: str) -> None:
    """Refuse a model whose weights hold NaN or inf: its images would be black or noise."""
    for name, module in parts.items():
        if module is not None and not all_finite(module.state_dict().values()):
            raise SpurcliError(
                f"{where}: the {name} weights contain NaN or infinite values (a diverged "
                "training run?); use an earlier checkpoint or retrain with a lower --lr"
            )
