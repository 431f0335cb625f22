"""spurcli-openclip's torch modules: plain classes, imported by the factories only when a model
is built (registration in `spurcli_openclip` imports no torch).

    from spurcli_openclip_modules import Embed, Presence, ZeroShot
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from spurcli_openclip import LOGIT_SCALE, encode_text, presence_prompts
from torch import nn


def embed(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = visual(x)
    if isinstance(out, tuple):  # towers that also return tokens (CoCa): pooled first
        out = out[0]
    return F.normalize(out, dim=-1)


class Embed(nn.Module):
    """open_clip image tower -> unit-norm image embeddings (B, D)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.visual, x)


class ZeroShot(nn.Module):
    """Image tower + fixed class embeddings -> 100 * cosine logits (B, 1000)."""

    def __init__(self, visual: nn.Module, head: torch.Tensor) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("head", head.float())  # (classes, D), moves with .to()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LOGIT_SCALE * embed(self.visual, x) @ self.head.T


class Presence(nn.Module):
    """Whole CLIP model: (images, ObjectQuery) -> (B,) presence (see `spurcli_openclip`)."""

    def __init__(self, preprocess: nn.Module, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.preprocess, self.model, self.tokenizer = preprocess, model, tokenizer
        self.texts: dict[Any, torch.Tensor] = {}  # query -> (sides, D) text embeddings

    def side_embeddings(self, query: Any) -> torch.Tensor:
        """(2 or 3, D): the class's, the feature's (if any) and the neutral embedding."""
        device = next(self.model.parameters()).device
        if query not in self.texts:
            rows = []
            for texts in presence_prompts(query).values():
                if texts:
                    emb = encode_text(self.model, self.tokenizer(texts).to(device))
                    rows.append(F.normalize(emb.mean(0), dim=-1))
            self.texts[query] = torch.stack(rows)
        return self.texts[query].to(device)

    def forward(self, images: torch.Tensor, query: Any) -> torch.Tensor:
        sides = self.side_embeddings(query)
        cos = embed(self.model.visual, self.preprocess(images)) @ sides.T  # (B, sides)
        return torch.sigmoid(LOGIT_SCALE * (cos[:, 0] - cos[:, 1:].amax(dim=1)))
