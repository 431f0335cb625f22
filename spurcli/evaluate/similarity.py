"""How alike two image sets are in a feature extractor's space (a plugin's penultimate
features), and the features themselves.

- ``mean_cosine``: the mean cosine similarity over all pairs (a in A, b in B); it equals the dot
  product of the two sets' mean unit vectors, so it costs O(N), not O(N^2).
- ``frechet`` (shown as ``frechet_<extractor>``): the Fréchet distance between Gaussians fitted
  to the two feature sets, ``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))``: FID's formula
  in another feature space, so not called FID. The trace of the matrix square root is computed as
  ``sum sqrt(eig(C_a^(1/2) C_b C_a^(1/2)))`` (symmetric PSD, `eigh`, negative rounding clipped),
  which needs no eps and is exact also for singular covariances. With fewer images than
  dimensions the same trace is the sum of the singular values of ``A_c B_c^T`` (the centred
  feature rows, n_a x n_b) over ``sqrt((n_a - 1)(n_b - 1))``: C_a C_b and that matrix times its
  transpose share their nonzero eigenvalues, so no dim x dim matrix is formed (a 24-image set in
  1,280 dimensions: milliseconds instead of ~0.4 s per pair). But with fewer images than
  dimensions (n <= dim, the usual case for a few dozen images) the covariances are rank-deficient
  sample estimates: the number is biased upwards and comparable only between set pairs of the
  same sizes; the JSON's ``frechet_note`` says so whenever it applies.
- ``nn_cosine_mean`` / ``nn_cosine_max``: for each image of A, the cosine to its nearest
  neighbour in B; with B = the training references, values near 1 flag memorised copies (the
  report shows the closest pairs).
- ``within_cosine_a``: the mean cosine between two different images of A, how alike the set's
  images are (1: one image over and over); a fine-tuning that narrows what a model draws raises
  it, which memorisation figures alone do not show.
- ``mean_cosine_ci``, ``nn_cosine_mean_ci`` (with ``resamples`` > 0): 95% seeded percentile
  bootstrap intervals over images: for ``mean_cosine`` the images of A and of B are resampled
  independently (each set keeps its size); for ``nn_cosine_mean`` the images of A (each keeps its
  nearest neighbour in the whole of B). They cover the sampling of images, not the training run.
- A similarity measured in the space of the extractor SFSL optimised against is circular: SFSL
  pulled the images towards the references there. `spurcli run` marks it and also measures a
  space SFSL did not optimise (docs/experiment.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spurcli.errors import SpurcliError
from spurcli.evaluate.config import ScoreConfig
from spurcli.evaluate.imagepass import find_items, score_items
from spurcli.fileio import atomic_path

log = logging.getLogger(__name__)

SIMILARITY_KEYS = ("mean_cosine", "frechet", "nn_cosine_mean", "nn_cosine_max")


NN_CHUNK = 1024  # rows of A per similarity block: memory stays O(chunk * |B|)


@dataclass
class Features:
    """One extractor's features of one image set."""

    names: list[str]  # image paths relative to the set's folder
    values: np.ndarray  # (N, D) float32

    def save(self, path: str | os.PathLike[str]) -> None:

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, names=np.array(self.names), values=self.values)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Features:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls([str(n) for n in data["names"]], data["values"])
        except (OSError, ValueError, KeyError, EOFError) as exc:  # a pickle in it is refused
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise SpurcliError(
                f"{path} is not a features file spurcli can read safely ({reason}); delete it "
                "and its features are computed again"
            ) from None


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of cos(a_i, b_j) over all pairs = <mean of unit a, mean of unit b>."""
    return float(unit(a).mean(axis=0) @ unit(b).mean(axis=0))


def within_cosine(a: np.ndarray) -> float | None:
    """Mean cos(a_i, a_j) over the pairs i != j of rows of ``a`` (None below two rows): the sum of
    all pairs' products is |sum of unit rows|^2, the n self-pairs add n of it."""
    if len(a) < 2:
        return None
    total = unit(a).sum(axis=0)
    return float((total @ total - len(a)) / (len(a) * (len(a) - 1)))


def nearest_neighbours(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: the index of its most cosine-similar row of ``b``, and the cosine."""
    ua, ub = unit(a), unit(b)
    index = np.empty(len(ua), np.int64)
    cosine = np.empty(len(ua), np.float64)
    for start in range(0, len(ua), NN_CHUNK):
        sims = ua[start : start + NN_CHUNK] @ ub.T
        index[start : start + NN_CHUNK] = sims.argmax(axis=1)
        cosine[start : start + NN_CHUNK] = sims.max(axis=1)
    return index, cosine


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b`` (see docstring)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    mu = a.mean(axis=0) - b.mean(axis=0)
    if max(len(a), len(b)) <= a.shape[1]:
        centred_a, centred_b = a - a.mean(axis=0), b - b.mean(axis=0)
        trace_a = float((centred_a**2).sum()) / (len(a) - 1)
        trace_b = float((centred_b**2).sum()) / (len(b) - 1)
        singular = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False)
        trace_sqrt = singular.sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    else:
        ca = np.atleast_2d(np.cov(a, rowvar=False))
        cb = np.atleast_2d(np.cov(b, rowvar=False))
        root_a = _psd_sqrt(ca)
        middle = root_a @ cb @ root_a
        eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)  # symmetric up to rounding
        trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
        trace_a, trace_b = float(np.trace(ca)), float(np.trace(cb))
    distance = mu @ mu + trace_a + trace_b - 2.0 * trace_sqrt
    return float(max(distance, 0.0))  # >= 0 in exact arithmetic


def similarity(a: Features, b: Features, *, resamples: int = 0, seed: int = 0) -> dict[str, Any]:
    """The four similarity numbers of A vs B in one feature space, and each A image's neighbour;
    with ``resamples``, bootstrap intervals of ``mean_cosine`` and ``nn_cosine_mean``."""
    from spurcli.evaluate.metrics import bootstrap_interval

    n_a, n_b, dim = len(a.names), len(b.names), a.values.shape[1]
    index, cosine = nearest_neighbours(a.values, b.values)
    unit_a, unit_b = unit(a.values), unit(b.values)

    def resampled_mean_cosine(rows_a: np.ndarray, rows_b: np.ndarray) -> float:
        picked_a, picked_b = rows_a.astype(np.int64), rows_b.astype(np.int64)
        return float(unit_a[picked_a].mean(axis=0) @ unit_b[picked_b].mean(axis=0))

    mean_ci = bootstrap_interval(
        [np.arange(n_a), np.arange(n_b)], resampled_mean_cosine, resamples=resamples, seed=seed
    )
    nn_ci = bootstrap_interval(
        [cosine], lambda v: float(np.mean(v)), resamples=resamples, seed=seed
    )
    frechet: float | None = None
    note = None
    if min(n_a, n_b) < 2:
        note = "needs at least 2 images per set"
    else:
        frechet = frechet_distance(a.values, b.values)
        if min(n_a, n_b) <= dim:
            note = (
                f"fewer images than dimensions ({n_a} and {n_b} vs {dim}): singular sample "
                "covariances, a high-variance estimate biased upwards; compare only between "
                "pairs of sets of the same sizes"
            )
    return {
        "mean_cosine": mean_cosine(a.values, b.values),
        "mean_cosine_ci": mean_ci,
        "nn_cosine_mean_ci": nn_ci,
        "frechet": frechet,
        "nn_cosine_mean": float(cosine.mean()),
        "nn_cosine_max": float(cosine.max()),
        "within_cosine_a": within_cosine(a.values),
        "n_a": n_a,
        "n_b": n_b,
        "dim": int(dim),
        "frechet_note": note,
        "nearest": [
            {"image": name, "neighbour": b.names[j], "cosine": float(c)}
            for name, j, c in zip(a.names, index, cosine, strict=True)
        ],
    }


def extract_features(
    root: str | os.PathLike[str],
    extractor: Any,
    *,
    batch_size: int = 32,
    device: str | None = None,
    image_size: int | None = None,
    strict: bool = False,
) -> Features:
    """``extractor``'s (a `LoadedModel`) features of every image below ``root``.

    The pass is `spurcli.evaluate.imagepass.score_items` with no classifiers, so an image is decoded
    and squared exactly as the classifiers see it. Sharded over the processes of a
    torchrun/accelerate group.
    """

    size = image_size or ScoreConfig.image_size
    options = ScoreConfig(batch_size=batch_size, device=device, strict=strict, image_size=size)
    options.check()
    root = Path(root)
    items = find_items(root, 0, real=False)  # the target class is unused: no classifiers
    desc = f"features ({extractor.name}) of {root}"
    found = score_items(items, [], options, [extractor], desc=desc)
    if not len(found.index):
        raise SpurcliError(f"no readable images in {root}")
    return Features(found.per_image.images, found.features[extractor.name])
