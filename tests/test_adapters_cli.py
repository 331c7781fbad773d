"""``clair adapters``: CLAIR per module on generated PEFT LoRA adapter folders."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from clair_stats.__main__ import main
from clair_stats.lora.cli import run_adapters
from clair_stats.lora.peft import read_adapters
from clair_stats.lora.synthetic import MODULES, synthetic_federation
from clair_stats.pipeline.refine import refine


def _step4(work, subspace, collaborative):
    """docs/pipeline.md §3.4 from its formulas: A^ refitted on S^ (top-r left
    singular vectors of the kept updates), sigma^2 by the median rule at the
    module's A^, and the positive-part James-Stein share b = min(1, (D - 2)
    sigma^2 / sum_k ||A^T (Theta_k - Thetabar)||^2), D = (|S^| - 1) r q."""
    import scipy.stats

    n, p, q = work.shape
    r = subspace.shape[1]
    off = work - np.einsum("pr,rs,ksq->kpq", subspace, subspace.T, work)
    sigma2 = np.median(np.sum(off**2, axis=(1, 2))) / scipy.stats.chi2.median(
        (p - r) * q
    )
    kept = work[collaborative]
    stacked = np.concatenate(list(kept), axis=1)
    refit = np.linalg.svd(stacked, full_matrices=False)[0][:, :r]
    inside = np.einsum("pr,kpq->krq", refit, kept - kept.mean(axis=0))
    dof = (kept.shape[0] - 1) * r * q
    b = min(1.0, (dof - 2) * sigma2 / np.sum(inside**2))
    return refine(work, refit, collaborative, shrinkage=b)


R = 4  # every client's LoRA rank in every module
V_PROJ = "model.layers.0.self_attn.v_proj"
# client 2 is contaminated in down_proj and q_proj, client 5 in v_proj
CONTAMINATED = {2: set(MODULES) - {V_PROJ}, 5: {V_PROJ}}


def _federation(root, seed=0, n_clients=8, contaminated=None):
    """K adapter folders of :func:`synthetic_federation` (3 modules, LoRA rank 4,
    contaminated factors 30 times the benign noise); default contamination:
    :data:`CONTAMINATED`."""
    if contaminated is None:
        contaminated = CONTAMINATED
    fed = synthetic_federation(
        n_clients, contaminated=contaminated, rank=R, lora_alpha=8.0, seed=seed
    )
    return fed.write(root)


def _float32_bound(*arrays) -> float:
    """Rounding of float32 storage: 1e-5 of the largest entry (float32 eps is
    1.2e-7; a product of two rounded factors of inner size <= 16 loses < 2e-6)."""
    return 1e-5 * max(float(np.abs(a).max()) for a in arrays)


def test_clair_adapters_flags_the_contaminated_and_writes_adapters(tmp_path, capsys):
    """End to end through the command line (K = 8, 3 modules): exactly the two
    contaminated clients are flagged, client 5 by its one contaminated module;
    the report has the documented fields; every refined adapter reads back with
    the inputs' modules and ranks, and flagged clients keep their local update.

    The seed is fixed; the claim holds with high probability, not by luck: over
    100 seeds of this design (strength 3) the procedure flagged a benign client
    in 1 run (Holm bounds this at alpha = 0.05 under the null model) and found
    the contaminated clients in 100 and 96 runs."""
    folders = _federation(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["adapters", *map(str, folders), "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "flagged: 2 client(s) ['client2', 'client5']" in printed
    assert "worst modules" in printed
    assert "rel. trunc." in printed

    report = json.loads((out / "clair_report.json").read_text())
    assert set(report) == {
        "format",
        "clair_stats_version",
        "settings",
        "base_model",
        "n_clients",
        "n_modules",
        "clients",
        "modules",
    }
    assert report["format"] == "clair_stats.adapters/1"
    assert (report["n_clients"], report["n_modules"]) == (8, 3)
    assert report["base_model"] == "tiny-llama"
    assert {
        "side",
        "alpha",
        "rank",
        "out_rank",
        "lam",
        "draws",
        "dtype",
        "solver_options",
    } <= set(report["settings"])
    assert "Holm" in report["settings"]["combination"]
    flagged = {c["name"] for c in report["clients"] if c["flagged"]}
    assert flagged == {"client2", "client5"}
    for client in report["clients"]:
        assert set(client) == {
            "name",
            "path",
            "flagged",
            "p_value",
            "rejected_modules",
            "worst_modules",
            "zero_update_modules",
            "uninformative",
            "output",
        }
        assert (client["p_value"] <= 0.05) == client["flagged"]
        assert client["zero_update_modules"] == []
        assert not client["uninformative"]
        assert len(client["worst_modules"]) == 3
    by_name = {c["name"]: c for c in report["clients"]}
    assert by_name["client5"]["rejected_modules"] == [V_PROJ]
    assert by_name["client5"]["worst_modules"][0]["module"] == V_PROJ
    for module in report["modules"]:
        assert {
            "name",
            "shape",
            "rank",
            "client_ranks",
            "tested",
            "zero_update_clients",
            "rejected_clients",
            "energies",
            "z",
            "p_values",
            "adjusted_p_values",
            "solver",
            "truncation_error",
            "refined_norm",
            "seconds",
        } == set(module)
        assert set(module["seconds"]) == {"fit", "refine"}
        assert all(t > 0 for t in module["seconds"].values())
        assert module["rank"] == R
        assert module["tested"]
        assert module["zero_update_clients"] == []
        assert module["solver"]["converged"]
        assert len(module["p_values"]) == len(module["truncation_error"]) == 8

    inputs = read_adapters(folders)
    outputs = read_adapters([c["output"] for c in report["clients"]])
    assert outputs.module_names == inputs.module_names
    for m in MODULES:
        assert all(s.rank == R and s.scaling == 1.0 for s in outputs.specs(m))
        before, after = inputs.dense(m), outputs.dense(m)
        for k in (2, 5):  # flagged: the local update, in every module
            np.testing.assert_allclose(
                after[k], before[k], rtol=0, atol=_float32_bound(before[k])
            )
        # benign clients are refined: their updates change
        assert not np.allclose(after[0], before[0])


@pytest.mark.parametrize("side", ["left", "right"])
def test_refined_adapters_are_the_spec_refinement(tmp_path, side):
    """With out_rank >= min(out, in) nothing is truncated, so each written adapter
    is step 4 of docs/pipeline.md §3.4 (on the transposes for side="right"), with
    the module's A^ and S^ the combined verdict; the energies are
    ||P_A^^perp Theta^_k||_F^2."""
    folders = _federation(tmp_path / "in", seed=1)
    result = run_adapters(
        folders, tmp_path / "out", side=side, out_rank=16, progress=False
    )
    inputs = read_adapters(folders)
    outputs = read_adapters(result.outputs)
    if side == "left":  # the generated clients share a column space only
        assert np.flatnonzero(result.flagged).tolist() == [2, 5]
    for module in result.modules:
        dense = inputs.dense(module.name)
        work = dense.transpose(0, 2, 1) if side == "right" else dense
        u = module.subspace
        off = work - np.einsum("pr,rs,ksq->kpq", u, u.T, work)
        np.testing.assert_allclose(
            module.energies, np.sum(off**2, axis=(1, 2)), rtol=1e-10
        )
        expected = _step4(work, u, result.collaborative)
        if side == "right":
            expected = expected.transpose(0, 2, 1)
        np.testing.assert_allclose(
            outputs.dense(module.name),
            expected,
            rtol=0,
            atol=_float32_bound(expected),
        )
        # full rank kept: the truncation error is rounding only
        assert np.all(module.truncation_error <= 1e-10 * module.refined_norm)


def test_command_line_errors_are_usage_errors(tmp_path, capsys):
    """Too few clients, a rank without complement, an existing output and a pickle
    adapter stop with a usage error (exit code 2) that says what to do."""
    folders = [
        str(f)
        for f in _federation(
            tmp_path / "in", n_clients=4, contaminated={2: CONTAMINATED[2]}
        )
    ]
    out = str(tmp_path / "out")
    cases = [
        (folders[:2], [], "needs K >= 3"),
        (folders, ["--rank", "16"], "no off-subspace complement"),
    ]
    for dirs, extra, message in cases:
        with pytest.raises(SystemExit) as info:
            main(["adapters", *dirs, "--out", out, "--no-progress", *extra])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    assert main(["adapters", *folders, "--out", out, "--no-progress"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["adapters", *folders, "--out", out, "--no-progress"])
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(["adapters", *folders, "--out", out, "--no-progress", "--overwrite"]) == 0
    )
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(b"never read")
    (pickled / "adapter_config.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["adapters", *folders, str(pickled), "--out", str(tmp_path / "o2")])
    assert "safe_serialization=True" in capsys.readouterr().err


def _small(root, **kwargs):
    """K = 4 adapter folders without contamination (fast: about 0.2 s a run)."""
    return _federation(root, n_clients=4, contaminated={}, **kwargs)


# -- zero updates (untrained modules) -----------------------------------------------

Q_PROJ = "model.layers.0.self_attn.q_proj"


def _with_zero_updates(root, n_clients, zero, seed=0, contaminated=None):
    """Adapter folders of :func:`synthetic_federation` in which client k's factor
    ``x`` ("B", PEFT's initialisation, or "A") is 0 in module m, for every
    (k, m, x) in ``zero``."""
    fed = synthetic_federation(
        n_clients, contaminated=contaminated or {}, rank=R, lora_alpha=8.0, seed=seed
    )
    for k, m, x in zero:
        fed.factors[m][0 if x == "B" else 1][k][:] = 0.0
    return fed.write(root)


def test_zero_updates_are_left_out_named_and_kept(tmp_path):
    """Client 3 never trained q_proj (B = 0), client 6 nothing (A = 0 in every
    module): the run goes on; q_proj is fit and tested on the six others (the
    same A^ as fitting them alone), Holm runs over the p-values there are,
    client 6 is uninformative (no p-value, not flagged), both keep their zero
    updates, the others are refined as usual, and the warning, the summary and
    the report name them."""
    from clair_stats.core.exceptions import ClairWarning
    from clair_stats.core.lowrank import LowRankUpdates
    from clair_stats.lora.adapters import fit_module
    from clair_stats.pipeline.multitest import reject

    zero = [(3, Q_PROJ, "B")] + [(6, m, "A") for m in MODULES]
    folders = _with_zero_updates(tmp_path / "in", 8, zero, contaminated=CONTAMINATED)
    with pytest.warns(ClairWarning, match="client3 in model.layers.0.self_attn.q_proj"):
        result = run_adapters(folders, tmp_path / "out", out_rank=16, progress=False)

    assert result.uninformative.tolist() == [k == 6 for k in range(8)]
    assert not result.flagged[6]
    assert np.isnan(result.p_values[6])
    assert np.isfinite(np.delete(result.p_values, 6)).all()
    by_name = {m.name: m for m in result.modules}
    q = by_name[Q_PROJ]
    assert np.flatnonzero(q.zero_update).tolist() == [3, 6]
    assert np.isnan(q.p_values[[3, 6]]).all()
    assert q.energies[3] == q.energies[6] == 0.0
    kept = [0, 1, 2, 4, 5, 7]
    assert np.isfinite(q.p_values[kept]).all()
    for m in MODULES:
        if m != Q_PROJ:
            assert np.flatnonzero(by_name[m].zero_update).tolist() == [6]
    # q_proj's A^ is the one of the six clients with a nonzero update
    inputs = read_adapters(folders)
    upd = inputs.updates(Q_PROJ)
    alone = fit_module(
        LowRankUpdates(
            [upd.B[k] for k in kept], [upd.A[k] for k in kept], upd.scaling[kept]
        ),
        R,
    )
    np.testing.assert_allclose(
        q.subspace @ q.subspace.T, alone.subspace @ alone.subspace.T, atol=1e-8
    )
    np.testing.assert_allclose(q.energies[kept], alone.energies, rtol=1e-8)
    # Holm over the 8 x 3 - 4 p-values there are
    p = np.array([m.p_values for m in result.modules])
    adjusted = np.array([m.adjusted_p_values for m in result.modules])
    present = np.isfinite(p)
    assert present.sum() == 8 * 3 - 4
    _, expected = reject(p[present], 0.05, "holm")
    np.testing.assert_array_equal(adjusted[present], expected)
    assert np.isnan(adjusted[~present]).all()

    outputs = read_adapters(result.outputs)
    for m in MODULES:
        after = outputs.dense(m)
        assert not after[6].any()
        if m == Q_PROJ:
            assert not after[3].any()
            # the others: refined among themselves (no truncation at rank 16)
            work = inputs.dense(m)[kept]
            expected = _step4(work, q.subspace, result.collaborative[kept])
            np.testing.assert_allclose(
                after[kept], expected, rtol=0, atol=_float32_bound(expected)
            )
        else:
            assert not np.allclose(after[3], inputs.dense(m)[3])  # refined

    summary = result.summary()
    assert "uninformative: ['client6']" in summary
    assert "zero update (untrained module: B = 0 or A = 0) of client3" in summary
    assert "client6  -        -          uninformative" in summary
    report = json.loads((tmp_path / "out" / "clair_report.json").read_text())
    clients = {c["name"]: c for c in report["clients"]}
    assert clients["client6"]["uninformative"] is True
    assert clients["client6"]["p_value"] is None
    assert clients["client6"]["zero_update_modules"] == list(MODULES)
    assert clients["client3"]["zero_update_modules"] == [Q_PROJ]
    assert not clients["client3"]["uninformative"]
    modules = {m["name"]: m for m in report["modules"]}
    assert modules[Q_PROJ]["zero_update_clients"] == ["client3", "client6"]
    assert modules[Q_PROJ]["p_values"][3] is None
    assert modules[Q_PROJ]["energies"][3] == 0.0


def test_a_module_with_fewer_than_three_nonzero_updates_is_not_tested(tmp_path):
    """K = 4 and two clients untrained in v_proj: v_proj is neither fit nor
    tested, every client keeps its update there, the other modules run as
    usual."""
    from clair_stats.core.exceptions import ClairWarning

    zero = [(0, V_PROJ, "B"), (1, V_PROJ, "A")]
    folders = _with_zero_updates(tmp_path / "in", 4, zero)
    with pytest.warns(ClairWarning, match="not tested: module"):
        result = run_adapters(folders, tmp_path / "out", progress=False)
    by_name = {m.name: m for m in result.modules}
    v = by_name[V_PROJ]
    assert not v.tested
    assert v.solver is None
    assert v.rank == 0
    assert np.isnan(v.p_values).all()
    assert not v.rejected.any()
    assert all(by_name[m].tested for m in MODULES if m != V_PROJ)
    assert not result.uninformative.any()
    inputs, outputs = read_adapters(folders), read_adapters(result.outputs)
    before, after = inputs.dense(V_PROJ), outputs.dense(V_PROJ)
    np.testing.assert_allclose(after, before, rtol=0, atol=_float32_bound(before))
    report = json.loads((tmp_path / "out" / "clair_report.json").read_text())
    module = next(m for m in report["modules"] if m["name"] == V_PROJ)
    assert module["tested"] is False
    assert module["solver"] is None
    assert module["rank"] == 0
    assert "not fit" in result.module_table()


def test_the_rule_with_gaps_is_client_verdict_without_them():
    """With every (client, module) energy present the verdict is client_verdict's;
    with one missing, that module's p-values are client_verdict's on its other
    clients and Holm runs over the rest."""
    from clair_stats.lora.adapters import _verdict
    from clair_stats.lora.verdict import client_verdict
    from clair_stats.pipeline.multitest import reject

    rng = np.random.default_rng(3)
    energies = np.exp(rng.normal(size=(3, 7)))
    energies[1, 4] *= 1e12
    names = ("a", "b", "c")
    full = client_verdict(energies, 0.05, modules=names, draws=4000)
    same = _verdict(list(energies), 0.05, names, 4000, 7)
    np.testing.assert_array_equal(same.adjusted_p_values, full.adjusted_p_values)
    np.testing.assert_array_equal(same.flagged, full.flagged)
    assert same.flagged[4]

    gappy = energies.copy()
    gappy[1, 2] = np.nan
    gap = _verdict(list(gappy), 0.05, names, 4000, 7)
    alone = client_verdict([np.delete(energies[1], 2)], 0.05, draws=4000)
    np.testing.assert_array_equal(
        np.delete(gap.module_p_values[1], 2), alone.module_p_values[0]
    )
    np.testing.assert_array_equal(
        gap.module_p_values[[0, 2]], full.module_p_values[[0, 2]]
    )
    present = np.isfinite(gap.module_p_values)
    _, adjusted = reject(gap.module_p_values[present], 0.05, "holm")
    np.testing.assert_array_equal(gap.adjusted_p_values[present], adjusted)
    assert np.isnan(gap.adjusted_p_values[1, 2])
    assert gap.flagged[4]
    untested = _verdict([energies[0], None, energies[2]], 0.05, names, 4000, 7)
    assert np.isnan(untested.module_p_values[1]).all()


# -- messages name the caller's options ---------------------------------------------


def test_python_messages_name_python_arguments(tmp_path):
    from clair_stats.core.exceptions import ConvergenceWarning

    folders = _small(tmp_path / "in")
    with pytest.warns(ConvergenceWarning, match=r"raise max_iter or tol\."):
        run_adapters(folders, tmp_path / "out", max_iter=2, progress=False)
    with pytest.raises(ValueError, match=r"pass rank < 16\.") as info:
        run_adapters(folders, tmp_path / "o2", rank=16, progress=False)
    assert "--" not in str(info.value)


# -- the outputs: complete or not at all, never over the inputs ----------------------


def _snapshot(folder):
    """Every file below ``folder``: relative path -> bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _leftovers(parent):
    """Staging or set-aside folders and files of a run, next to its outputs."""
    return sorted(p.name for p in parent.iterdir() if ".clair-" in p.name)


def test_overwrite_swaps_the_whole_output_and_a_failure_leaves_the_old_one(
    tmp_path, monkeypatch
):
    """A write failing at the third client (a full disk), an interrupt during the
    analysis, and a failing final rename each leave the earlier output byte for
    byte, and the finished work in the work folder for the next run; a
    successful --overwrite (which resumes from it) replaces every client and the
    report together and leaves nothing else behind. In-process (jobs=1), where
    the monkeypatches apply."""
    import errno

    import clair_stats.lora.cli as cli
    import clair_stats.lora.writing as writing
    from clair_stats.lora.cli import OutputError

    folders = _small(tmp_path / "in")
    out = tmp_path / "out"
    run_adapters(folders, out, progress=False)
    before = _snapshot(out)
    assert "clair_report.json" in before

    real_write = writing.write_adapter
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(writing, "write_adapter", full_disk)
    again = {"out_rank": 2, "overwrite": True, "progress": False, "jobs": 1}
    with pytest.raises(OutputError, match="No space left on device") as info:
        run_adapters(folders, out, **again)
    assert "nothing was changed" in str(info.value)
    assert "the same command resumes" in str(info.value)
    assert len(calls) == 3
    assert all(str(out) not in str(c) for c in calls)  # written next to out only
    assert _snapshot(out) == before
    assert _leftovers(tmp_path) == [".out.clair-work"]
    monkeypatch.undo()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit_modules", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_adapters(folders, out, **again)
    assert _snapshot(out) == before
    assert _leftovers(tmp_path) == [".out.clair-work"]
    monkeypatch.undo()

    real_rename = os.rename

    def rename(src, dst):
        if ".clair-work" in str(src):  # the new output cannot be moved in
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(cli.os, "rename", rename)
    with pytest.raises(OutputError, match="cross-device"):
        run_adapters(folders, out, **again)
    assert _snapshot(out) == before  # moved aside and back
    assert _leftovers(tmp_path) == [".out.clair-work"]
    monkeypatch.undo()

    result = run_adapters(folders, out, **again)
    after = _snapshot(out)
    assert set(after) == set(before)
    assert all(after[f] != before[f] for f in after if f.endswith(".safetensors"))
    report = json.loads((out / "clair_report.json").read_text())
    assert report["settings"]["out_rank"] == 2
    assert [c["output"] for c in report["clients"]] == list(result.outputs)
    written = read_adapters(result.outputs)
    assert {s.rank for m in MODULES for s in written.specs(m)} == {2}
    assert _leftovers(tmp_path) == []


def test_a_write_failure_on_the_command_line_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    import clair_stats.lora.writing as writing

    folders = [str(f) for f in _small(tmp_path / "in")]
    out = tmp_path / "out"

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(writing, "write_adapter", full_disk)
    argv = ["adapters", *folders, "--out", str(out), "--no-progress", "--jobs", "1"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("clair adapters: error: writing the outputs")
    assert "No space left on device" in captured.err
    assert not out.exists()
    assert _leftovers(tmp_path) == [".out.clair-work"]


@pytest.mark.parametrize(
    ("place", "relation"),
    [
        ("the input", "is"),
        ("the inputs' parent", "contains"),
        ("inside an input", "lies inside"),
        ("a link to the inputs' parent", "contains"),
        ("--json inside an input", "lies inside"),
    ],
)
def test_outputs_overlapping_an_input_are_refused_before_any_work(
    tmp_path, monkeypatch, capsys, place, relation
):
    """Even with --overwrite; symlinks are resolved; nothing is read beyond the
    checks and the inputs are left byte for byte."""
    import clair_stats.lora.cli as cli

    folders = _small(tmp_path / "in")
    before = _snapshot(tmp_path / "in")
    (tmp_path / "link").symlink_to(tmp_path / "in")
    out, extra = {
        "the input": (folders[1], []),
        "the inputs' parent": (tmp_path / "in", []),
        "inside an input": (folders[0] / "refined", []),
        "a link to the inputs' parent": (tmp_path / "link", []),
        "--json inside an input": (
            tmp_path / "out",
            ["--json", str(folders[2] / "report.json")],
        ),
    }[place]

    def never(*args, **kwargs):
        raise AssertionError("the analysis started")

    monkeypatch.setattr(cli, "fit_modules", never)
    monkeypatch.setattr(cli, "read_adapters", never)
    argv = ["adapters", *map(str, folders), "--out", str(out), "--overwrite"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--no-progress", *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f" {relation} the input adapter folder" in err
    assert "outside every input folder" in err
    assert _snapshot(tmp_path / "in") == before
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_only_an_earlier_output_is_replaced(tmp_path, monkeypatch):
    """An empty --out is used as is; one holding other files is never replaced,
    even with overwrite; an earlier output (even one left with its report only)
    needs overwrite. A --json copy: only over an earlier report, never inside
    --out; the copy and OUT/clair_report.json are the same report."""
    folders = _small(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    run_adapters(folders, out, progress=False)  # empty: no overwrite needed

    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt, which no clair adapters"):
        run_adapters(folders, out, overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "clair_report.json").write_text('{"format": "something else"}')
    with pytest.raises(FileExistsError, match="not replaced, even with"):
        run_adapters(folders, mine, overwrite=True, progress=False)

    only_report = tmp_path / "only_report"
    run_adapters(folders, only_report, progress=False)
    for client in folders:
        shutil.rmtree(only_report / client.name)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        run_adapters(folders, only_report, progress=False)
    run_adapters(folders, only_report, overwrite=True, progress=False)
    assert sorted(p.name for p in only_report.iterdir()) == sorted(
        ["clair_report.json", *(f.name for f in folders)]
    )

    copy = tmp_path / "reports" / "r.json"
    run_adapters(folders, tmp_path / "o2", report=copy, progress=False)
    assert copy.read_text() == (tmp_path / "o2" / "clair_report.json").read_text()
    with pytest.raises(FileExistsError, match="already exists"):
        run_adapters(folders, tmp_path / "o3", report=copy, progress=False)
    run_adapters(folders, tmp_path / "o3", report=copy, overwrite=True, progress=False)
    assert json.loads(copy.read_text())["clients"][0]["output"] == str(
        tmp_path / "o3" / "client0"
    )
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    with pytest.raises(FileExistsError, match="is not a clair adapters report"):
        run_adapters(folders, tmp_path / "o4", report=other, overwrite=True)
    assert other.read_text() == "[1, 2]"
    with pytest.raises(ValueError, match="lies inside out"):
        run_adapters(folders, tmp_path / "o4", report=tmp_path / "o4" / "r.json")
    assert not (tmp_path / "o4").exists()
    assert _leftovers(tmp_path) == []
    assert _leftovers(tmp_path / "reports") == []
    monkeypatch.chdir(tmp_path / "o3")  # replacing it would delete the shell's folder
    with pytest.raises(ValueError, match="is or contains the current folder"):
        run_adapters(folders, ".", overwrite=True, progress=False)
    assert (tmp_path / "o3" / "clair_report.json").exists()


@pytest.mark.parametrize("which", ["--out", "--json"])
def test_an_unwritable_output_fails_at_once_in_one_line(
    tmp_path, monkeypatch, capsys, which
):
    """A path below a file (and, for a user without root, a read-only folder)
    fails before the analysis, with one line naming the path: exit code 1."""
    import clair_stats.lora.cli as cli

    folders = [str(f) for f in _small(tmp_path / "in")]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def never(*args, **kwargs):
        raise AssertionError("the analysis started")

    monkeypatch.setattr(cli, "fit_modules", never)
    places = {"--out": str(tmp_path / "out"), "--json": None}
    places[which] = str(blocker / "sub" / "x")
    argv = ["adapters", *folders, "--out", places["--out"], "--no-progress"]
    if places["--json"] is not None:
        argv += ["--json", places["--json"]]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{blocker} is a file, not a folder" in err
    assert f"choose another {which}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_a_read_only_parent_fails_at_once_in_one_line(tmp_path, capsys, monkeypatch):
    """A folder the user may not write into: one line, exit 1. As root, which
    writes into read-only folders, the refusal of the file system is simulated
    (the error the command sees is the same PermissionError)."""
    import pathlib

    folders = [str(f) for f in _small(tmp_path / "in")]
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        real_mkdir = pathlib.Path.mkdir

        def refuse(self, *args, **kwargs):
            if locked in self.parents:
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    try:
        code = main(
            ["adapters", *folders, "--out", str(locked / "out"), "--no-progress"]
        )
    finally:
        locked.chmod(0o700)
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Permission denied" in err
    assert str(locked) in err


def test_command_line_messages_name_command_line_options(tmp_path, capsys):
    """Under clair adapters the advice names --max-iter, --tol and --rank, which
    the command has, and never the Python arguments; the solver options reach
    the solver and the report; bad values are refused by the option itself."""
    folders = [str(f) for f in _small(tmp_path / "in")]
    out = tmp_path / "out"
    argv = ["adapters", *folders, "--out", str(out), "--no-progress"]
    assert main([*argv, "--max-iter", "2", "--tol", "1e-9"]) == 0
    err = capsys.readouterr().err
    assert "clair adapters: warning: step 1 did not converge" in err
    assert "raise --max-iter or --tol." in err
    assert "max_iter" not in err
    report = json.loads((out / "clair_report.json").read_text())
    assert report["settings"]["solver_options"] == {"max_iter": 2, "tol": 1e-9}
    assert all(m["solver"]["iterations"] <= 2 for m in report["modules"])

    with pytest.raises(SystemExit):
        main([*argv, "--overwrite", "--rank", "16"])
    err = capsys.readouterr().err
    assert "choose --rank below 16." in err
    assert "rank <" not in err
    assert "side=" not in err
    for option, value, message in [
        ("--tol", "-1", "argument --tol: must be finite and > 0"),
        ("--max-iter", "0", "argument --max-iter: must be >= 1"),
        ("--alpha", "1.5", "argument --alpha: must be in (0, 1)"),
        ("--lam", "nan", "argument --lam: must be finite and > 0"),
    ]:
        with pytest.raises(SystemExit) as info:
            main([*argv, option, value])
        assert info.value.code == 2
        assert message in capsys.readouterr().err


def test_an_overflowing_dtype_is_named_without_python_arguments(tmp_path, capsys):
    """Factors beyond float16's range (scaling 2.5e5): the command says to write
    in float32 and names no Python argument; nothing is written."""
    fed = synthetic_federation(4, rank=R, lora_alpha=1e6, seed=0)
    folders = [str(f) for f in fed.write(tmp_path / "in")]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["adapters", *folders, "--out", str(out), "--dtype", "float16"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "overflow float16; write them in float32." in err
    assert "dtype=" not in err
    assert not out.exists()
    assert _leftovers(tmp_path) == []
