"""`spurcli compare`: the similarity math against direct computations, and the command itself."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _compare_helpers import make_sets

from spurcli.errors import SpurcliError, UsageError
from spurcli.evaluate.compare import CompareConfig, CompareResult, Features, compare, similarity
from spurcli.evaluate.metrics import rate_difference
from spurcli.evaluate.similarity import (
    frechet_distance,
    mean_cosine,
    nearest_neighbours,
    within_cosine,
)

scipy_linalg = pytest.importorskip("scipy.linalg")


def direct_frechet(a: np.ndarray, b: np.ndarray, eps: float = 0.0) -> float:
    """The textbook formula with scipy's general matrix square root (as pytorch-fid does)."""
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    if eps:
        ca, cb = ca + eps * np.eye(len(ca)), cb + eps * np.eye(len(cb))
    root = scipy_linalg.sqrtm(ca @ cb).real
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.trace(root))


def test_frechet_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(loc=0.5, size=(150, 8)) @ rng.normal(size=(8, 8))
    assert frechet_distance(a, b) == pytest.approx(direct_frechet(a, b), rel=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_closed_forms():
    rng = np.random.default_rng(1)
    # Diagonal covariances: |mu_a - mu_b|^2 + sum (sqrt(var_a) - sqrt(var_b))^2.
    a = rng.normal(size=(400, 3)) * [1.0, 2.0, 3.0] + [1.0, 0.0, 0.0]
    b = rng.normal(size=(300, 3)) * [0.5, 2.0, 1.0]
    va, vb = a.var(0, ddof=1), b.var(0, ddof=1)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    a_white = (a - a.mean(0)) @ np.linalg.inv(np.linalg.cholesky(cov_a)).T * np.sqrt(va)
    b_white = (b - b.mean(0)) @ np.linalg.inv(np.linalg.cholesky(cov_b)).T * np.sqrt(vb)
    a_white += a.mean(0)
    b_white += b.mean(0)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    assert frechet_distance(a_white, b_white) == pytest.approx(expected, rel=1e-9)
    # One dimension: (mu_a - mu_b)^2 + (sd_a - sd_b)^2.
    x, y = rng.normal(2, 3, size=(50, 1)), rng.normal(-1, 1, size=(60, 1))
    d1 = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(x, y) == pytest.approx(d1, rel=1e-9)


def test_frechet_with_fewer_samples_than_dimensions():
    """Singular covariances: the exact value is the limit of the eps-regularised formula."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 20)), rng.normal(loc=0.3, size=(9, 20))
    exact = frechet_distance(a, b)
    assert np.isfinite(exact) and exact > 0
    assert exact == pytest.approx(direct_frechet(a, b, eps=1e-9), rel=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


def test_frechet_both_routes_agree_across_the_switch():
    """Up to as many rows as dimensions the trace comes from the n_a x n_b product of the centred
    rows, past it from the covariances: the same number either side of the switch."""
    rng = np.random.default_rng(4)
    mix = rng.normal(size=(30, 30))
    for n_a, n_b in [(24, 5), (30, 30), (31, 12), (12, 31)]:
        a = rng.normal(size=(n_a, 30)) @ mix
        b = rng.normal(loc=0.2, size=(n_b, 30)) @ mix
        expected = direct_frechet(a, b, eps=1e-9)
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-4), (n_a, n_b)


def test_cosines_match_brute_force():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = ua @ ub.T
    assert mean_cosine(a, b) == pytest.approx(sims.mean(), rel=1e-12)
    index, cosine = nearest_neighbours(a, b)
    assert (index == sims.argmax(1)).all() and np.allclose(cosine, sims.max(1))
    result = similarity(
        Features([f"a{i}" for i in range(7)], a), Features([f"b{i}" for i in range(11)], b)
    )
    assert result["nn_cosine_max"] == pytest.approx(sims.max())
    assert result["nn_cosine_mean"] == pytest.approx(sims.max(1).mean())
    own = ua @ ua.T
    assert result["within_cosine_a"] == pytest.approx(own[~np.eye(7, dtype=bool)].mean())
    assert "fewer images than dimensions" not in (result["frechet_note"] or "")
    assert [n["neighbour"] for n in result["nearest"]] == [f"b{j}" for j in sims.argmax(1)]
    few = similarity(Features(["x"], a[:1]), Features(["y", "z"], b[:2]))
    assert few["frechet"] is None and "at least 2" in few["frechet_note"]
    assert few["within_cosine_a"] is None  # one image: no pair
    assert within_cosine(np.tile(a[:1], (4, 1))) == pytest.approx(1.0)


def test_similarity_intervals_are_a_seeded_bootstrap_over_images():
    rng = np.random.default_rng(5)
    a = Features([f"a{i}" for i in range(30)], rng.normal(1.0, 1.0, size=(30, 6)))
    b = Features([f"b{i}" for i in range(20)], rng.normal(1.0, 1.0, size=(20, 6)))
    plain_numbers = similarity(a, b)
    assert plain_numbers["mean_cosine_ci"] is None and plain_numbers["nn_cosine_mean_ci"] is None
    sim = similarity(a, b, resamples=500, seed=1)
    assert sim == similarity(a, b, resamples=500, seed=1)  # seeded: reproducible
    assert sim["mean_cosine_ci"] != similarity(a, b, resamples=500, seed=2)["mean_cosine_ci"]
    for key in ("mean_cosine", "nn_cosine_mean"):
        lo, hi = sim[f"{key}_ci"]
        assert lo < sim[key] < hi and hi - lo < 0.5
    # More images of the same distribution: a narrower interval (it covers image sampling).
    big_a = Features([f"a{i}" for i in range(300)], rng.normal(1.0, 1.0, size=(300, 6)))
    big_b = Features([f"b{i}" for i in range(200)], rng.normal(1.0, 1.0, size=(200, 6)))
    big = similarity(big_a, big_b, resamples=500, seed=1)["mean_cosine_ci"]
    assert big[1] - big[0] < (sim["mean_cosine_ci"][1] - sim["mean_cosine_ci"][0]) / 2
    # By hand: resampling rows of both sets, the percentiles of the resampled mean cosines
    # land where scipy's percentile bootstrap puts them (to the Monte Carlo error).
    ua = a.values / np.linalg.norm(a.values, axis=1, keepdims=True)
    ub = b.values / np.linalg.norm(b.values, axis=1, keepdims=True)
    draws = np.random.default_rng(9)
    values = [
        ua[draws.integers(0, 30, 30)].mean(0) @ ub[draws.integers(0, 20, 20)].mean(0)
        for _ in range(4000)
    ]
    assert sim["mean_cosine_ci"] == pytest.approx(np.percentile(values, [2.5, 97.5]), abs=0.02)


def test_compare_scores_and_similarity(tmp_path, fake_plugin):
    a, b = make_sets(tmp_path)
    config = CompareConfig(target="hummingbird", classifiers=["fake"], extractors=["fake"])
    result = compare(a, b, config, labels=("generated", "references"))
    data = result.to_json()
    assert set(data) == {
        "a", "b", "differences", "similarity", "extractors", "preprocess", "consensus_of"
    }  # fmt: skip
    assert data["a"]["classifiers"]["fake"]["spurious_rate"] == 1.0
    assert data["b"]["classifiers"]["fake"]["spurious_rate"] == 0.25
    # Other file names and no sample records: independent sets, Fisher's exact test on
    # [[4, 0], [1, 3]]: two-sided p = P(4 hits in A) + P(1) = (5 + 5) / C(8, 4).
    diff = data["differences"]
    assert diff["pairing"]["paired"] is False
    rate = diff["classifiers"]["fake"]["spurious_rate"]
    assert rate["delta"] == 0.75 and rate["p_value"] == pytest.approx(10 / 70)
    assert (rate["test"], rate["interval"]) == ("Fisher exact", "Newcombe hybrid score")
    assert rate == rate_difference([1, 1, 1, 1], [1, 0, 0, 0], paired=False)
    assert diff["consensus"]["all"] == rate  # one classifier: the consensus is its rate
    assert (data["a"]["n_images"], data["b"]["n_images"]) == (4, 4)
    sim = data["similarity"]["fake"]
    assert set(sim) >= {"mean_cosine", "frechet", "nn_cosine_mean", "nn_cosine_max"}
    assert sim["nn_cosine_max"] == pytest.approx(1.0)  # red0 is in B too: memorised
    assert "nearest" not in sim  # per-image neighbours are in report_data, not in the JSON
    nearest = result.report_data()["similarity"]["fake"]["nearest"]
    assert {"image": "red0.png", "neighbour": "copy.png"}.items() <= nearest[0].items()
    again = CompareResult.from_report_data(json.loads(json.dumps(result.report_data())))
    assert again.to_json() == data


def test_compare_consensus_leaves_out_the_classifiers_named_and_says_so(tmp_path, fake_plugin):
    """The consensus of the compare JSON, its tables and the report is over the classifiers not
    left out (run leaves out the circular SFSL extractor); the output names who and why."""
    from spurcli.experiment.report import write_report

    a, b = make_sets(tmp_path)
    config = CompareConfig(
        target=94, classifiers=["fake", "fake:1"], extractors=[], exclude_from_consensus=["fake:1"]
    )
    result = compare(a, b, config)
    data = result.to_json()
    # fake:1 never says 94: a consensus over both would be 0 everywhere; over fake alone it is
    # fake's rate, and its differences are fake's.
    assert data["a"]["consensus"]["all"] == 1.0 and data["b"]["consensus"]["all"] == 0.25
    assert (
        data["differences"]["consensus"]["all"]
        == (data["differences"]["classifiers"]["fake"]["spurious_rate"])
    )
    assert data["consensus_of"] == {
        "classifiers": ["fake"],
        "left_out": {"fake:1": "--exclude-from-consensus"},
    }
    said = "consensus of 1 victim (fake); fake:1 left out: --exclude-from-consensus"
    assert said in str(result.tables()[0].caption)
    page = write_report(tmp_path / "r.html", [result]).read_text()
    assert said in page
    again = CompareResult.from_report_data(json.loads(json.dumps(result.report_data())))
    assert again.to_json() == data
    both = CompareConfig(target=94, classifiers=["fake", "fake:1"], extractors=[])
    everyone = compare(a, b, both)
    assert everyone.to_json()["a"]["consensus"]["all"] == 0.0  # both: fake:1 never agrees
    assert "consensus of 2 victims (fake, fake:1)" in str(everyone.tables()[0].caption)
    with pytest.raises(UsageError, match="not among the classifiers"):
        compare(a, b, CompareConfig(target=94, classifiers=["fake"], exclude_from_consensus=["x"]))


def test_compare_decodes_each_image_once_for_classifiers_and_extractors(
    tmp_path, fake_plugin, monkeypatch
):
    """One pass serves both folders, the real images (shared), the classifiers and extractors;
    its features are those `extract_features` (what `run` uses) takes folder by folder."""
    from spurcli import plugins
    from spurcli.evaluate import imagepass
    from spurcli.evaluate.similarity import extract_features

    a, b = make_sets(tmp_path)
    real = shutil.copytree(a, tmp_path / "real")
    reads: list[str] = []
    real_read = imagepass.read_image

    def counting_read(path):
        reads.append(str(path))
        return real_read(path)

    monkeypatch.setattr(imagepass, "read_image", counting_read)
    config = CompareConfig(
        target=94, classifiers=["fake", "fake:1"], extractors=["fake"], real=real, device="cpu"
    )
    result = compare(a, b, config)
    assert len(reads) == len(set(reads)) == 4 + 4 + 4  # A, B and the real images, once each
    assert result.a["n_real"] == result.b["n_real"] == 4
    extractor = plugins.extractors().load("fake")
    separate = similarity(
        extract_features(a, extractor), extract_features(b, extractor), resamples=1000, seed=0
    )
    assert result.similarity["fake"] == separate


def test_compare_command_json_and_report(tmp_path, cli_main, fake_plugin):
    a, b = make_sets(tmp_path)
    report, out_json = tmp_path / "r.html", tmp_path / "c.json"
    args = ["compare", str(a), str(b), "-t", "94", "-c", "fake", "-e", "fake"]
    code, out, err = cli_main(*args, "--report", str(report), "--json", str(out_json))
    assert code == 0, err
    assert "frechet_fake" in out and "spurious_rate" in out
    data = json.loads(out_json.read_text())
    assert data["similarity"]["fake"]["frechet"] >= 0
    assert report.read_text().startswith("<!DOCTYPE html>")
    code, out, _ = cli_main(*args, "--json", "-")
    assert code == 0 and json.loads(out)["a"]["target"] == {"index": 94, "name": "hummingbird"}


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["-e", "nope"], 2, "unknown feature extractor 'nope'"),
        (["-c", ""], 2, "--classifiers is required"),
        (["-t", "hummingbrd"], 2, "did you mean"),
        (["--extractor-weights", "clip=random"], 2, "not among the extractors"),
        (["--extractor-weights", "fake"], 2, "--extractor-weights expects NAME=PATH"),
    ],
)
def test_compare_bad_input(tmp_path, cli_main, fake_plugin, extra, code, message):
    a, b = make_sets(tmp_path)
    args = ["compare", str(a), str(b), "-t", "94", "-c", "fake", "-e", "fake", *extra]
    got, _, err = cli_main(*args)
    assert got == code and message in err
    assert len(err.strip().splitlines()) == 1


def test_compare_empty_set(tmp_path, cli_main, fake_plugin):
    a, _ = make_sets(tmp_path)
    (tmp_path / "empty").mkdir()
    code, _, err = cli_main("compare", str(a), str(tmp_path / "empty"), "-t", "94", "-c", "fake")
    assert code == 1 and "no images in" in err and len(err.strip().splitlines()) == 1


def test_an_extractor_listed_twice_is_a_usage_error():
    from spurcli.errors import UsageError
    from spurcli.plugins import load_extractors

    with pytest.raises(UsageError, match="extractors listed twice: template-linear"):
        load_extractors(["template-linear", "template-linear"])


def _sample_set(root, prompt: str, red: list[int], base_seed: int = 0, manifest: bool = False):
    """Images laid out and recorded as `spurcli sample` writes them: image i of the prompt has
    the seed derived from (base_seed, i); red ones are hummingbirds to the fake classifier."""
    from PIL import Image

    from spurcli.generate.sample import save_image, write_manifest
    from spurcli.seeds import derive_seed
    from spurcli.text import slugify

    records = {}
    for i, is_red in enumerate(red):
        file = f"{slugify(prompt)}/{i:06d}.png"
        record = {
            "file": file,
            "prompt": prompt,
            "index": i,
            "seed": derive_seed(base_seed, i),
            "negative_prompt": "",
            "steps": 1,
            "guidance": 1.0,
            "scheduler": "ddim",
            "model": "tiny",
        }
        colour = (220, 20, 30) if is_red else (40, 160, 60)
        save_image(root / file, Image.new("RGB", (32, 32), colour), record)
        records[file] = record
    if manifest:
        write_manifest(root, records)
    return root


def test_tuned_and_untuned_samples_pair_by_seed_and_prompt(tmp_path, fake_plugin):
    # The tuned prompt has the identifier, the baseline's not: the pairs are still found.
    a = _sample_set(tmp_path / "a", "a photo of sks flower", [1, 1, 1, 1, 0, 0], manifest=True)
    b = _sample_set(tmp_path / "b", "a photo of flower", [1, 0, 0, 0, 1, 0])
    config = CompareConfig(target=94, classifiers=["fake"], extractors=[], bootstrap=100)
    diff = compare(a, b, config).differences
    assert diff["pairing"] == {"paired": True, "mode": "auto", "rule": "seed and prompt"}
    rate = diff["classifiers"]["fake"]["spurious_rate"]
    # Discordant pairs: 3 for A (images 1-3), 1 for B (image 4): p = 2 * (4 + 1) / 2**4.
    assert rate["test"] == "McNemar exact" and rate["interval"] == "Newcombe hybrid score, paired"
    assert rate["delta"] == pytest.approx(2 / 6) and rate["p_value"] == pytest.approx(10 / 16)
    mean_p = diff["classifiers"]["fake"]["mean_target_prob"]
    assert mean_p["interval"] == "percentile bootstrap, pairs resampled"
    assert mean_p["delta_ci"][0] <= mean_p["delta"] <= mean_p["delta_ci"][1]
    # --paired no: the same sets as independent samples.
    config.paired = "no"
    rate = compare(a, b, config).differences["classifiers"]["fake"]["spurious_rate"]
    assert rate["test"] == "Fisher exact"


def test_other_seeds_do_not_pair(tmp_path, fake_plugin):
    a = _sample_set(tmp_path / "a", "a photo of flower", [1, 1, 0])
    b = _sample_set(tmp_path / "b", "a photo of flower", [1, 0, 0], base_seed=1)
    config = CompareConfig(target=94, classifiers=["fake"], extractors=[], bootstrap=0)
    diff = compare(a, b, config).differences
    assert diff["pairing"]["paired"] is False
    assert "3 images of A and 3 of B have no partner by seed and prompt" in diff["pairing"]["rule"]
    assert diff["classifiers"]["fake"]["mean_target_prob"]["delta_ci"] is None  # --bootstrap 0
    config.paired = "yes"
    with pytest.raises(SpurcliError, match="--paired yes, but the sets do not pair"):
        compare(a, b, config)


def test_files_without_records_pair_by_name(tmp_path, fake_plugin):
    a, _ = make_sets(tmp_path)
    same = shutil.copytree(a, tmp_path / "again")
    config = CompareConfig(target=94, classifiers=["fake"], extractors=[], bootstrap=50)
    diff = compare(a, same, config).differences
    assert diff["pairing"]["rule"] == "file name" and diff["pairing"]["paired"]
    rate = diff["classifiers"]["fake"]["spurious_rate"]
    assert (rate["delta"], rate["p_value"]) == (0.0, 1.0)  # no discordant pair


def test_average_precision_is_compared_at_matched_sizes(tmp_path, fake_plugin):
    a, b = make_sets(tmp_path)
    (b / "other0.png").unlink()  # B: 3 images, A: 4
    real = shutil.copytree(a, tmp_path / "real")
    config = CompareConfig(target=94, classifiers=["fake"], extractors=[], real=real)
    result = compare(a, b, config)
    ap = result.differences["classifiers"]["fake"]["average_precision"]
    assert (ap["matched_size"], ap["subsamples"]) == (3, 200)
    assert ap["delta_ci"] is None  # unequal sets: no interval, so never coloured
    auc = result.differences["classifiers"]["fake"]["roc_auc"]
    assert auc["interval"].startswith("percentile bootstrap, sets resampled independently")
    text = "\n".join(str(t.caption) for t in result.tables())
    assert "n=3, mean of 200 subsamples" in text


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--paired", "maybe"], 2, "--paired must be one of auto, yes, no"),
        (["--paired", "yes"], 1, "--paired yes, but the sets do not pair"),
        (["--bootstrap", "-5"], 2, "--bootstrap must be 0"),
    ],
)
def test_compare_statistics_options(tmp_path, cli_main, fake_plugin, extra, code, message):
    a, b = make_sets(tmp_path)
    got, _, err = cli_main("compare", str(a), str(b), "-t", "94", "-c", "fake", "-e", "", *extra)
    assert got == code and message in err
    assert len(err.strip().splitlines()) == 1
