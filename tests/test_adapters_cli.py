"""``clair adapters``: CLAIR per module on generated PEFT LoRA adapter folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clair_stats.__main__ import main
from clair_stats.lora.cli import run_adapters
from clair_stats.lora.peft import read_adapters
from clair_stats.lora.synthetic import MODULES, synthetic_federation
from clair_stats.pipeline.refine import refine

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
    assert {"side", "alpha", "rank", "out_rank", "lam", "draws", "dtype"} <= set(
        report["settings"]
    )
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
            "output",
        }
        assert (client["p_value"] <= 0.05) == client["flagged"]
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
            "rejected_clients",
            "energies",
            "z",
            "p_values",
            "adjusted_p_values",
            "solver",
            "truncation_error",
            "refined_norm",
        } == set(module)
        assert module["rank"] == R
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
    is Theta~_k = P_A^ Theta^_k + P_A^^perp Thetabar over S^ (docs/pipeline.md §3.4, on
    the transposes for side="right"), with A^ the module's subspace and S^ the
    combined verdict; the energies are ||P_A^^perp Theta^_k||_F^2."""
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
        expected = refine(work, u, result.collaborative)
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
