"""Seeds derived from a run's seed and the names of what they are for.

    from spurcli.seeds import derive_seed
    derive_seed(0, 7)                              # image 7 of a set sampled with --seed 0
    derive_seed(0, "a red flower", 7)              # image 7 of that prompt: other prompts differ
    derive_seed(0, "replicate-2:split")            # the reference split of training run 2

A seed is a hash of its parts (numpy's SeedSequence, which mixes its words so that near inputs
give unrelated outputs): two parts lists share a seed only by a 1-in-2^63 accident, and a seed
depends on nothing but its parts, so a re-run, a resume or another machine derives the same one.
"""

from __future__ import annotations

import hashlib

_WORD = 0xFFFFFFFFFFFFFFFF  # SeedSequence takes unsigned integers


def derive_seed(seed: int, *parts: int | str) -> int:
    """A seed for ``parts`` (integers and strings) under ``seed``; fits a signed 64-bit int.

    Integers enter as themselves, so ``derive_seed(s, i)`` stays what it was before strings
    were allowed; a string enters as the first 8 bytes of its SHA-256."""
    import numpy as np  # the core stays cheap to import

    words = [seed & _WORD]
    for part in parts:
        if isinstance(part, str):
            words.append(int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little"))
        else:
            words.append(int(part) & _WORD)
    state = np.random.SeedSequence(words).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF
