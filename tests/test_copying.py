"""The sequence-copying experiment (simulations/copying): data generators, LoRA
plumbing, CLAIR per module with the verdict rule, and a tiny end-to-end run.

The generator tests need numpy only; the others skip cleanly without torch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from simulations.copying.tasks import (
    ZIPF_SHIFT,
    CopyTask,
    swap_map,
    token_distribution,
)

SWAPS = ((0, 1), (2, 3))


# ------------------------------------------------------------------- generators
def test_zipf_law_is_the_normalised_inverse_shift():
    probs = token_distribution(32, "zipf")
    expected = 1.0 / (np.arange(32) + ZIPF_SHIFT)
    np.testing.assert_allclose(probs, expected / expected.sum(), rtol=1e-15)
    np.testing.assert_allclose(token_distribution(8, "uniform"), np.full(8, 1 / 8))


def test_segments_do_not_overlap_and_are_copied():
    task = CopyTask(vocab=32, length=48, seg_min=6, seg_max=10)
    batch = task.sample(500, np.random.default_rng(0))
    s1, s2 = batch.starts.T
    L = batch.lengths
    assert np.all((L >= 6) & (L <= 10))
    assert np.all(s1 >= 0)
    assert np.all(s1 + L <= s2), "the copies overlap"
    assert np.all(s2 + L <= 48), "the second copy runs past the sequence"
    for i in range(len(batch)):
        first = batch.tokens[i, s1[i] : s1[i] + L[i]]
        second = batch.tokens[i, s2[i] : s2[i] + L[i]]
        np.testing.assert_array_equal(first, second)
    assert not batch.mapped.any()


def test_placements_are_uniform_over_non_overlapping_pairs():
    # T = 12, L = 3: the pairs s1 < s2 with s1 + 3 <= s2 <= 9 number
    # C(T - 2L + 2, 2) = C(8, 2) = 28, each of probability 1/28. Under this law
    # the goodness-of-fit statistic is chi^2 with 27 degrees of freedom; the
    # threshold is its 0.999 quantile (a correct generator fails 1 run in 1000,
    # and the seed is fixed).
    task = CopyTask(vocab=16, length=12, seg_min=3, seg_max=3, skip=0)
    batch = task.sample(5600, np.random.default_rng(1))
    pairs = [(a, b) for a in range(10) for b in range(10) if a + 3 <= b <= 9]
    assert len(pairs) == math.comb(8, 2)
    index = {pair: j for j, pair in enumerate(pairs)}
    counts = np.zeros(len(pairs))
    for s1, s2 in batch.starts:
        counts[index[(int(s1), int(s2))]] += 1  # KeyError if a pair is invalid
    expected = len(batch) / len(pairs)
    statistic = np.sum((counts - expected) ** 2 / expected)
    assert statistic < scipy.stats.chi2.ppf(0.999, len(pairs) - 1)


@pytest.mark.parametrize("skip", [0, 1, 2])
def test_mask_scores_the_second_copy_after_b_plus_one_tokens(skip):
    task = CopyTask(vocab=32, length=40, seg_min=5, seg_max=9, skip=skip)
    batch = task.sample(200, np.random.default_rng(2))
    assert batch.mask.shape == (200, 39)
    for i in range(len(batch)):
        s2, L = int(batch.starts[i, 1]), int(batch.lengths[i])
        scored = np.flatnonzero(batch.mask[i])
        # t = s2 + b, ..., s2 + L - 2: targets x[s2 + b + 1] .. x[s2 + L - 1]
        np.testing.assert_array_equal(scored, np.arange(s2 + skip, s2 + L - 1))
        assert scored.size == L - 1 - skip
        # the last target is the last token of the copy, never the one after it
        assert scored[-1] + 1 == s2 + L - 1


def test_swap_map_is_an_involution_fixing_the_other_tokens():
    phi = swap_map(16, ((0, 1), (2, 3), (8, 9)))
    np.testing.assert_array_equal(phi[phi], np.arange(16))
    assert phi[0] == 1
    assert phi[3] == 2
    assert phi[9] == 8
    np.testing.assert_array_equal(phi[[4, 5, 6, 7, 10]], [4, 5, 6, 7, 10])


@pytest.mark.parametrize(
    ("swaps", "message"),
    [
        (((0, 1), (1, 2)), "disjoint"),
        (((0, 0),), "two different tokens"),
        (((0, 16),), "two different tokens"),
        (((0, 1, 2),), "pair"),
    ],
)
def test_bad_swaps_are_rejected(swaps, message):
    with pytest.raises(ValueError, match=message):
        swap_map(16, swaps)


def test_swap_copy_maps_every_second_copy():
    task = CopyTask(swaps=SWAPS)
    batch = task.sample(300, np.random.default_rng(3))
    phi = task.token_map
    assert batch.mapped.all()
    for i in range(len(batch)):
        (s1, s2), L = batch.starts[i], batch.lengths[i]
        np.testing.assert_array_equal(
            batch.tokens[i, s2 : s2 + L], phi[batch.tokens[i, s1 : s1 + L]]
        )


def test_mix_of_swapped_and_exact_copies_has_the_given_fraction():
    # The number of mapped sequences is Binomial(n, pi); the tolerance is 4
    # binomial standard deviations (two-sided probability 6e-5 under the law).
    n, fraction = 4000, 0.3
    task = CopyTask(swaps=SWAPS, swap_fraction=fraction)
    batch = task.sample(n, np.random.default_rng(4))
    sd = math.sqrt(n * fraction * (1 - fraction))
    assert abs(batch.mapped.sum() - n * fraction) < 4 * sd
    phi = task.token_map
    for i in range(200):
        (s1, s2), L = batch.starts[i], batch.lengths[i]
        first = batch.tokens[i, s1 : s1 + L]
        expected = phi[first] if batch.mapped[i] else first
        np.testing.assert_array_equal(batch.tokens[i, s2 : s2 + L], expected)


def test_label_noise_redraws_the_second_copy():
    # With label noise, a second-copy token equals the first-copy token with the
    # collision probability sum_i p_i^2 (independent draws); an exact copy would
    # give 1. The count of equal positions is Binomial(m, sum p_i^2): 4 sd again.
    task = CopyTask(label_noise=True)
    batch = task.sample(2000, np.random.default_rng(5))
    equal = []
    for i in range(len(batch)):
        (s1, s2), L = batch.starts[i], batch.lengths[i]
        equal.append(batch.tokens[i, s1 : s1 + L] == batch.tokens[i, s2 : s2 + L])
    equal = np.concatenate(equal)
    collision = float(np.sum(task.probabilities**2))
    sd = math.sqrt(equal.size * collision * (1 - collision))
    assert abs(equal.sum() - equal.size * collision) < 4 * sd


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"length": 15, "seg_max": 8}, ValueError, "length"),
        ({"seg_min": 2, "skip": 1}, ValueError, "seg_min"),
        ({"distribution": "pareto"}, ValueError, "distribution"),
        ({"swap_fraction": 1.5, "swaps": SWAPS}, ValueError, "swap_fraction"),
        ({"label_noise": True, "swaps": SWAPS}, ValueError, "swaps must be empty"),
        ({"vocab": 2.5}, TypeError, "vocab"),
    ],
)
def test_bad_tasks_are_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        CopyTask(**kwargs)


def test_sampling_is_deterministic_in_the_generator():
    task = CopyTask(swaps=SWAPS, swap_fraction=0.5)
    a = task.sample(50, np.random.default_rng(7))
    b = task.sample(50, np.random.default_rng(7))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.mask, b.mask)
    with pytest.raises(TypeError, match="Generator"):
        task.sample(5, 7)


# ----------------------------------------------------------------- LoRA plumbing
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _model(torch, n_layers=2):
    from simulations.copying.transformer import ModelConfig, Transformer

    config = ModelConfig(vocab=16, length=20, d_model=8, n_layers=n_layers)
    return Transformer(config, generator=torch.Generator().manual_seed(0)).eval()


def _tokens(torch, n=6, length=20):
    return torch.randint(0, 16, (n, length), generator=torch.Generator().manual_seed(1))


def test_zero_adapter_leaves_the_model_unchanged(torch):
    model = _model(torch)
    tokens = _tokens(torch)
    before = model(tokens).detach()
    model.add_adapters(rank=2, alpha=4.0, generator=torch.Generator().manual_seed(2))
    after = model(tokens).detach()
    # B = 0 at initialisation: the adapter adds exactly 0
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    for delta in model.deltas().values():
        assert torch.count_nonzero(delta) == 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in n for n in trainable)


def test_merging_s_b_a_into_w_gives_the_same_outputs(torch):
    model = _model(torch)
    tokens = _tokens(torch)
    base = model.base_weights()
    model.add_adapters(rank=2, alpha=3.0, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module in model.lora_modules().values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen))
    with_adapter = model(tokens).detach()
    deltas = model.deltas()
    for name, module in model.lora_modules().items():
        expected = 1.5 * module.lora_B @ module.lora_A  # s = alpha / r = 3 / 2
        torch.testing.assert_close(deltas[name], expected.detach())
        assert torch.linalg.matrix_rank(deltas[name]) <= 2
    model.remove_adapters()
    model.set_weights(base)
    plain = model(tokens).detach()
    assert (plain - with_adapter).abs().max() > 1e-3, "the adapter changed nothing"
    model.set_weights(base, deltas)
    merged = model(tokens).detach()
    torch.testing.assert_close(merged, with_adapter, rtol=1e-5, atol=1e-5)


def test_set_weights_rejects_unknown_modules(torch):
    model = _model(torch, n_layers=1)
    with pytest.raises(KeyError, match="unknown modules"):
        model.set_weights(model.base_weights(), {"layers.5.q": torch.zeros(8, 8)})


def _tiny_pretrain_config(steps=15):
    from simulations.copying.training import PretrainConfig
    from simulations.copying.transformer import ModelConfig

    return PretrainConfig(
        model=ModelConfig(vocab=16, length=24, d_model=8, n_layers=1),
        task=CopyTask(vocab=16, length=24, seg_min=4, seg_max=6),
        steps=steps,
        batch=8,
        seed=3,
    )


def test_pretraining_is_deterministic_and_cached(torch, tmp_path):
    from simulations.copying.training import checkpoint_path, pretrain, pretrained_model

    config = _tiny_pretrain_config()
    a = pretrain(config).state_dict()
    b = pretrain(config).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    cached = pretrained_model(config, tmp_path)
    path = checkpoint_path(config, tmp_path)
    assert path.exists()
    assert path.parent == tmp_path
    reloaded = pretrained_model(config, tmp_path).state_dict()
    for name in a:
        torch.testing.assert_close(reloaded[name], a[name], rtol=0, atol=0)
        torch.testing.assert_close(cached.state_dict()[name], a[name], rtol=0, atol=0)
    # another configuration gets another file
    assert checkpoint_path(_tiny_pretrain_config(steps=16), tmp_path) != path


def test_pretraining_rejects_a_swapped_task(torch):
    from simulations.copying.training import PretrainConfig

    with pytest.raises(ValueError, match="base copy task"):
        PretrainConfig(task=CopyTask(swaps=SWAPS))


def test_fine_tune_returns_rank_r_updates_deterministically(torch):
    from simulations.copying.training import FineTuneConfig, fine_tune, pretrain

    model = pretrain(_tiny_pretrain_config())
    model.add_adapters(rank=2, alpha=2.0, generator=torch.Generator().manual_seed(5))
    init = model.adapter_state()
    batch = CopyTask(vocab=16, length=24, seg_min=4, seg_max=6, swaps=SWAPS).sample(
        12, np.random.default_rng(6)
    )
    config = FineTuneConfig(rank=2, alpha=2.0, steps=4, batch=5)
    first = fine_tune(model, init, batch, config, np.random.default_rng(7))
    second = fine_tune(model, init, batch, config, np.random.default_rng(7))
    assert set(first) == {f"layers.0.{m}" for m in "qkvo"}
    for name, delta in first.items():
        assert delta.shape == (8, 8)
        assert delta.dtype == np.float64
        assert np.linalg.matrix_rank(delta, tol=1e-6) <= 2
        assert np.linalg.norm(delta) > 0, "training left B at 0"
        np.testing.assert_array_equal(delta, second[name])


# ------------------------------------------------------------- CLAIR per module
def _module_updates(rng, off_subspace, p=12, q=10, rank=2, n_clients=10, noise=0.05):
    """Benign: A B_k^T + small iid noise; client j of ``off_subspace`` gets a
    large update orthogonal to span(A)."""
    A = np.linalg.qr(rng.standard_normal((p, rank)))[0]
    updates = np.stack(
        [A @ rng.standard_normal((rank, q)) for _ in range(n_clients)]
    ) + noise * rng.standard_normal((n_clients, p, q))
    perp = np.eye(p) - A @ A.T
    for j in off_subspace:
        updates[j] = 3.0 * perp @ rng.standard_normal((p, q))
    return updates


def test_a_client_off_the_subspace_in_any_module_is_flagged(torch):
    """The verdict is the library's rule (lora.verdict) on the per-module energies:
    client 8 is off the subspace in 2 of the 3 modules, client 9 in 1 of 3; both
    are flagged (one module is enough: their energies are about 10^4 times the
    benign ones, p-values at the far end of the null law) and no benign client
    is (Holm at 0.05 over the 30 pairs; fixed seed). Flagged clients keep their
    local update in every module; the others are refined."""
    from clair_stats.lora.adapters import fit_module
    from clair_stats.lora.verdict import client_verdict
    from simulations.copying.federation import clair_per_module

    rng = np.random.default_rng(8)
    updates = {
        "m0": _module_updates(rng, [8, 9]),
        "m1": _module_updates(rng, [8]),
        "m2": _module_updates(rng, []),
    }
    verdict = clair_per_module(updates, rank=2)
    assert verdict.n_modules == 3
    np.testing.assert_array_equal(verdict.module_flags[[8, 9]], [2, 1])
    assert verdict.module_flags[:8].max() == 0
    np.testing.assert_array_equal(np.flatnonzero(verdict.flagged), [8, 9])
    expected = client_verdict([fit_module(u, 2).energies for u in updates.values()])
    np.testing.assert_array_equal(verdict.flagged, expected.flagged)
    np.testing.assert_array_equal(verdict.p_values, expected.p_values)
    # flagged clients keep their local update; the others are refined
    for name, stack in updates.items():
        for k in (8, 9):
            np.testing.assert_array_equal(verdict.refined[name][k], stack[k])
        assert not np.allclose(verdict.refined[name][0], stack[0])


# ------------------------------------------------------------------ end to end
@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAIR_RESULTS", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("experiment", ["homogeneous", "heterogeneous"])
def test_tiny_run_gives_finite_accuracies_of_every_method(
    torch, results, copying_tiny, experiment
):
    from simulations.copying import study
    from simulations.copying.federation import METHODS

    config = {"experiment": experiment, **copying_tiny}
    rows = study.run(config, seed=11)
    assert [row["method"] for row in rows] == list(METHODS)
    K = copying_tiny["n_clients"]
    by_method = {row["method"]: row for row in rows}
    for row in rows:
        assert len(row["accuracy"]) == K
        assert len(row["relative_change"]) == K
        acc = np.asarray(row["accuracy"])
        assert np.all(np.isfinite(acc))
        assert np.all((acc >= 0) & (acc <= 1))
        assert np.isclose(row["benign_accuracy"], acc[:3].mean())
    # relative change against local: (acc - acc_local) / acc_local, NaN where a
    # (barely trained) local model scores 0
    local = np.asarray(by_method["local"]["accuracy"])
    scored = local > 0
    assert scored.any()
    expected = np.full(K, np.nan)
    expected[scored] = 0.0
    np.testing.assert_array_equal(by_method["local"]["relative_change"], expected)
    fed = np.asarray(by_method["fedavg"]["accuracy"])
    change = np.asarray(by_method["fedavg"]["relative_change"])
    np.testing.assert_allclose(change[scored], (fed / local - 1)[scored])
    assert np.isnan(change[~scored]).all()
    assert by_method["local"]["kinds"] == ["benign"] * 3 + ["other_swap", "label_noise"]
    clair_row = by_method["clair"]
    assert len(clair_row["flagged"]) == K
    assert len(clair_row["module_flags"]) == K
    assert 0 <= clair_row["precision"] <= 1
    assert 0 <= clair_row["recall"] <= 1
    assert by_method["fedavg"]["precision"] is None
    assert clair_row["n_modules"] == 4  # q, k, v, o of the one layer
    assert 0 <= clair_row["unconverged_modules"] <= clair_row["n_modules"]
    # the pretraining checkpoint went to <results>/copying/checkpoints
    assert list((results / "copying" / "checkpoints").glob("*.pt"))


def test_run_is_deterministic_in_the_seed(torch, results, copying_tiny):
    from simulations.copying import study

    config = {"experiment": "homogeneous", **copying_tiny}
    a = study.run(config, seed=5)
    b = study.run(config, seed=5)
    c = study.run(config, seed=6)
    assert a == b
    assert a != c


def test_without_contamination_fedavg_benign_is_fedavg(torch, results, copying_tiny):
    from simulations.copying import study

    config = {"experiment": "homogeneous", **copying_tiny, "n_contaminated": 0}
    rows = {row["method"]: row for row in study.run(config, seed=2)}
    assert rows["fedavg_benign"]["accuracy"] == rows["fedavg"]["accuracy"]


def test_bad_settings_are_rejected(torch):
    from simulations.copying.federation import Settings

    with pytest.raises(ValueError, match="unknown settings"):
        Settings.from_config({"experiment": "homogeneous", "n_clent": 3})
    with pytest.raises(ValueError, match="experiment"):
        Settings(experiment="mixed")
    with pytest.raises(ValueError, match="benign majority"):
        Settings(n_clients=6, n_contaminated=3)
    with pytest.raises(TypeError, match="ft_steps"):
        Settings(ft_steps=2.5)


def test_study_report_writes_figures_and_table(copying_grid, tmp_path):
    """The report of the tiny grid (tests/conftest.py: both experiments, 2
    replicates each, run once per session)."""
    from simulations.copying import study

    frame = copying_grid.frame.copy()
    n_reps = copying_grid.study.replicates
    assert len(frame) == len(study.EXPERIMENTS) * n_reps * len(study.STYLE)
    folder = tmp_path / "report"
    study.report(frame, folder, copying_grid.args)
    for name in ("copying_homogeneous", "copying_heterogeneous", "copying_detection"):
        assert (folder / f"{name}.png").stat().st_size > 10_000
    table = study.summary_table(frame)
    assert set(table["method"]) == set(study.STYLE)
    assert len(table) == len(study.EXPERIMENTS) * len(study.STYLE)
    text = (folder / "summary.md").read_text()
    assert "CLAIR detection: precision" in text
    assert "## heterogeneous" in text


def test_quick_grid_and_parser():
    from simulations.copying import study

    args = study.parser().parse_args(["--quick", "--experiment", "heterogeneous"])
    built = study.build(args)
    assert [c["experiment"] for c in built.configs] == ["heterogeneous"]
    assert built.replicates == study.QUICK_REPLICATES
    full = study.build(study.parser().parse_args([]))
    assert full.replicates == 100
    assert len(full.configs) == 2
    assert all(set(c) == {"experiment"} for c in full.configs)


def test_relative_change_is_nan_where_local_scores_zero(torch):
    from simulations.copying.federation import relative_change

    out = relative_change(np.array([0.5, 0.2, 0.0]), np.array([0.25, 0.0, 0.0]))
    assert out[0] == 1.0
    assert np.isnan(out[1:]).all()


# ------------------------------------------------------- cache of client updates
#: Settings that only CLAIR or the evaluation read: they must not enter the key.
NOT_TRAINING = {"n_test", "clair_rank", "clair_alpha"}


def _changed(settings, name):
    """``settings`` with field ``name`` changed to another valid value."""
    from dataclasses import replace

    value = getattr(settings, name)
    if isinstance(value, str):
        candidates = [v for v in ("homogeneous", "heterogeneous") if v != value]
    elif isinstance(value, int):
        candidates = [value + 1, 2 * value, value - 1]
    else:
        candidates = [value / 2, 2 * value]
    for candidate in candidates:
        try:
            out = replace(settings, **{name: candidate})
            out.pretrain_config()
        except (TypeError, ValueError):
            continue
        return out
    raise AssertionError(f"no valid change of {name}")


def test_cache_key_follows_the_training_settings_only(torch):
    """Every setting of the heterogeneous design (where every field matters) is
    changed in turn: the key changes with each one that the training reads, and
    with the seed, and stays when CLAIR's or the evaluation's settings change. A
    new setting fails here until it is classified."""
    from dataclasses import fields

    from simulations.copying.federation import Settings, client_key

    base = Settings(experiment="heterogeneous")
    key = client_key(base, seed=1)
    assert client_key(Settings(experiment="heterogeneous"), seed=1) == key
    assert client_key(base, seed=2) != key
    kept = {
        f.name for f in fields(Settings) if client_key(_changed(base, f.name), 1) == key
    }
    assert kept == NOT_TRAINING


def _tiny_settings(copying_tiny):
    from simulations.copying.federation import Settings

    return Settings.from_config({"experiment": "heterogeneous", **copying_tiny})


def _no_training(*args, **kwargs):
    raise AssertionError("fine_tune was called: the cache was not used")


def test_cached_replicate_gives_the_same_rows(
    torch, results, copying_tiny, monkeypatch
):
    """The first run writes <results>/copying/clients/<key>.npz, the second reads
    it without training; both give the rows of a run without cache, bit for bit
    (compared as JSON text, where NaN equals NaN)."""
    import json

    from simulations.copying import federation, study

    settings = _tiny_settings(copying_tiny)
    config = {"experiment": "heterogeneous", **copying_tiny}
    plain = federation.run_replicate(settings, 4, str(results / "ckpt"), None)
    assert not (results / "copying" / "clients").exists()
    first = study.run(config, seed=4)
    files = list((results / "copying" / "clients").glob("*.npz"))
    assert [f.stem for f in files] == [federation.client_key(settings, 4)]
    monkeypatch.setattr(federation, "fine_tune", _no_training)
    second = study.run(config, seed=4)
    text = json.dumps(plain)
    assert json.dumps(first) == text
    assert json.dumps(second) == text
    # a CLAIR setting changes the rows but reuses the cache
    other = study.run({**config, "clair_alpha": 0.2}, seed=4)
    assert len(list((results / "copying" / "clients").glob("*.npz"))) == 1
    assert len(other) == len(plain)


def _write_bad(path, kind, updates, key):
    import zipfile

    from simulations.copying.clients import write_updates

    if kind == "garbage":
        path.write_bytes(b"not a numpy archive")
    elif kind == "truncated":
        write_updates(path, updates, key)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "shape":
        write_updates(path, {k: v[:, :-1] for k, v in updates.items()}, key)
    elif kind == "module":
        write_updates(path, dict(list(updates.items())[1:]), key)
    elif kind == "key":
        write_updates(path, updates, "another")
    elif kind == "dtype":
        write_updates(path, {k: v.astype(np.float32) for k, v in updates.items()}, key)
    elif kind == "nan":
        first = next(iter(updates))
        write_updates(
            path, {**updates, first: np.full_like(updates[first], np.nan)}, key
        )
    elif kind == "pickle":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("__meta__.npy", b"\x80\x04N.")  # a pickle, not .npy
    else:
        raise ValueError(kind)


BAD_FILES = ["garbage", "truncated", "shape", "module", "key", "dtype", "nan", "pickle"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_read_updates_refuses_a_bad_file(tmp_path, kind):
    from simulations.copying.clients import (
        CacheError,
        read_updates,
        updates_path,
        write_updates,
    )

    rng = np.random.default_rng(0)
    updates = {f"layers.0.{m}": rng.standard_normal((5, 8, 8)) for m in "qkvo"}
    shapes = {name: value.shape for name, value in updates.items()}
    path = updates_path(tmp_path, "k1")
    assert read_updates(path, "k1", shapes) is None  # no file yet
    write_updates(path, updates, "k1")
    back = read_updates(path, "k1", shapes)
    assert list(back) == list(updates)
    for name in updates:
        np.testing.assert_array_equal(back[name], updates[name])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    _write_bad(path, kind, updates, "k1")
    with pytest.raises(CacheError, match=path.name):
        read_updates(path, "k1", shapes)


def test_a_corrupt_cache_file_is_retrained(torch, results, copying_tiny):
    """A damaged file warns, is trained again and overwritten with good updates."""
    import json
    import warnings

    from simulations.copying import federation, study
    from simulations.copying.clients import CacheWarning

    settings = _tiny_settings(copying_tiny)
    config = {"experiment": "heterogeneous", **copying_tiny}
    expected = json.dumps(study.run(config, seed=3))
    path = results / "copying" / "clients" / f"{federation.client_key(settings, 3)}.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(CacheWarning, match="training the clients again"):
        assert json.dumps(study.run(config, seed=3)) == expected
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # the new file is good
        assert json.dumps(study.run(config, seed=3)) == expected
    assert path.read_bytes() == before
