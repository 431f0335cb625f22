"""spurcli-owlv2's torch module: a plain class, imported by the factory only when the detector
is built (registration in `spurcli_owlv2` imports no torch).

    from spurcli_owlv2_modules import Presence
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from spurcli_owlv2 import CLIP_MEAN, CLIP_STD, PAD_VALUE, query_texts
from torch import nn


class Presence(nn.Module):
    """OWLv2 + tokenizer: (images (B,3,H,W) in [0, 1], ObjectQuery) -> (B,) presence."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.size = int(model.config.vision_config.image_size)
        self.max_tokens = int(model.config.text_config.max_position_embeddings)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.dtype)
        h, w = x.shape[-2:]
        side = max(h, w)
        if (h, w) != (side, side):  # new tensor: the caller's batch is never touched
            x = F.pad(x, (0, side - w, 0, side - h), value=PAD_VALUE)
        if side != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor, query: Any) -> torch.Tensor:
        texts = query_texts(query)
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        ).to(images.device)
        batch = images.shape[0]
        # OWLv2 takes (batch x queries) token rows: each image's queries, one after another
        # (the text tower's cost is small next to the 960-pixel image tower).
        out = self.model(
            input_ids=tokens["input_ids"].repeat(batch, 1),
            attention_mask=tokens["attention_mask"].repeat(batch, 1),
            pixel_values=self.preprocess(images),
        )
        # logits: (B, boxes, queries); a box's score for a query is sigmoid(logit)
        return torch.sigmoid(out.logits.float()).amax(dim=(1, 2))
