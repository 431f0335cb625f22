"""spurcli plugin: OWLv2 open-vocabulary detection, as a detector of the class object.

    spurcli curate samples/ --target hummingbird --out ds/ --detectors owlv2
    spurcli curate samples/ ... --detector-weights owlv2=/models/owlv2-base-patch16-ensemble

    import torch
    from spurcli import imagenet
    from spurcli.evaluate.detect import object_query
    from spurcli.plugins import detectors
    owl = detectors().load("owlv2", weights="random").module      # a tiny random OWLv2
    owl(torch.rand(2, 3, 64, 64), object_query(imagenet.resolve_class(94)))  # (2,) in [0, 1]

Presence = the highest detection score any box gets for any of the class's queries: OWLv2 scores
every image patch's box against every text query, and ``sigmoid(class logit)`` is the score its
post-processing thresholds (``Owlv2Processor.post_process_object_detection``). The queries are
``"a photo of a <name>"`` for each name of the `ObjectQuery` (the ImageNet name, synonyms and any
``--object-prompt``), OWL-ViT's recommended prompt form; the spurious feature is not used.

Pre-processing runs in torch on the [0, 1] batch spurcli hands over (no PIL round trip, so the
batch is the one every other model sees): pad to a square with grey 0.5 at the bottom and right,
as `Owlv2ImageProcessor` does, resize to the model's input size (960 for the base model;
bilinear, antialiased), normalise with CLIP's mean and std.

Weights: None = the hub's ``google/owlv2-base-patch16-ensemble`` (cached or downloaded; offline and
not cached, one line saying what to fetch), a local folder holding that model's files
(``config.json``, weights, tokenizer files), or ``"random"``: a tiny OWLv2 (one layer per tower,
width 32, 64 px input, byte-level tokenizer) built from an `Owlv2Config`, for tests. Remote code
is never run.
"""

from __future__ import annotations

import os
from typing import Any

from spurcli import hookimpl
from spurcli.errors import SpurcliError

NAME = "owlv2"
HUB_MODEL = "google/owlv2-base-patch16-ensemble"
PROMPT = "a photo of a {}"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_VALUE = 0.5  # Owlv2ImageProcessor pads with grey, at the bottom and right


@hookimpl
def register_detectors(register):
    register(
        NAME,
        make_owlv2,
        description="OWLv2 open-vocabulary detection (transformers): max box score of the class",
        default_weights=f"hub:{HUB_MODEL}",
    )


def query_texts(query: Any) -> list[str]:
    """The text queries OWLv2 gets for an `ObjectQuery`: one per name."""
    return [PROMPT.format(name) for name in query.names]


def make_owlv2(weights: str | None) -> Any:
    from spurcli_owlv2_modules import Presence

    from spurcli.weights import is_random

    if is_random(weights):
        model, tokenizer = tiny_random()
    else:
        model, tokenizer = _pretrained(os.fspath(weights) if weights is not None else HUB_MODEL)
    return Presence(model.eval().float(), tokenizer)


def tiny_random(seed: int = 0) -> tuple[Any, Any]:
    """A tiny OWLv2 with seeded random weights and a tokenizer that needs no download."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    from spurcli.generate.tiny import _tiny_tokenizer

    tokenizer = _tiny_tokenizer()
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    config = Owlv2Config(
        text_config={
            **tower,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 16,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**tower, "num_attention_heads": 2, "image_size": 64, "patch_size": 16},
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):  # the same "random" model in every process
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(config)
    return model, tokenizer


def _pretrained(source: str) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, Owlv2ForObjectDetection

    from spurcli.weights import load_error_text, offline

    if os.path.isfile(source):  # never taken for a hub id
        raise SpurcliError(
            f"{source} is a file; OWLv2 weights are a folder (config.json, model.safetensors, "
            f"tokenizer files): --detector-weights {NAME}=FOLDER"
        )
    local = os.path.isdir(source)
    try:
        model = Owlv2ForObjectDetection.from_pretrained(
            source, trust_remote_code=False, **({"use_safetensors": True} if local else {})
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:
        if local:
            first = load_error_text(exc)
            raise SpurcliError(f"{source} does not hold an OWLv2 model: {first}") from None
        if not isinstance(exc, OSError):
            raise
        raise SpurcliError(
            f"weights for '{NAME}' are not available{' offline' if offline() else ''}: need the "
            f"hub model {source} (`hf download {source}` where online), then pass its folder "
            f"(--detector-weights {NAME}=FOLDER), or use random weights"
        ) from exc
    return model, tokenizer
