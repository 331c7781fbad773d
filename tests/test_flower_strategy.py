"""ClairStrategy and its numpy core, without a Flower runtime.

The rules of :mod:`clair_stats.flower` (layout, the verdict over modules, the
history over rounds, the refinement and the global mean) are checked on numpy
arrays against the library's functions called directly; :class:`ClairStrategy`'s
message handling (faulty replies, personalised messages, metrics) on Flower
messages built in the test. The Flower runtimes (simulation and deployment) are
exercised in tests/test_flower_runtime.py.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from clair_stats import LowRankUpdates, clair, refine_clients
from clair_stats.flower import (
    ArrayLayout,
    ClientHistory,
    global_arrays,
    refine_round,
    round_verdict,
)
from clair_stats.pipeline.multitest import reject

P, Q, R = 30, 20, 2
BAD = (7, 8)


def _adapter(rng, k, modules=("m0",), basis=None, noise=0.05, dtype=np.float64):
    """Client k's PEFT-named LoRA arrays: benign B in span(basis), BAD elsewhere."""
    out = {}
    for m in modules:
        if k in BAD:
            span = np.linalg.qr(rng.standard_normal((P, R)))[0]
        else:
            span = basis
        b = 3 * span @ rng.standard_normal((R, R)) + noise * rng.standard_normal((P, R))
        a = rng.standard_normal((R, Q)) / np.sqrt(Q)
        out[f"base_model.model.{m}.lora_A.weight"] = a.astype(dtype)
        out[f"base_model.model.{m}.lora_B.weight"] = b.astype(dtype)
    return out


def _federation(modules=("m0",), n_clients=10, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((P, R)))[0]
    return [_adapter(rng, k, modules, basis, dtype=dtype) for k in range(n_clients)]


def _product(arrays, module="m0"):
    """B A of one client's LoRA module."""
    key = f"base_model.model.{module}.lora_"
    return arrays[key + "B.weight"] @ arrays[key + "A.weight"]


def _factors(clients, module="m0"):
    key = f"base_model.model.{module}.lora_"
    return LowRankUpdates(
        [c[key + "B.weight"] for c in clients], [c[key + "A.weight"] for c in clients]
    )


# --- layout -------------------------------------------------------------------


def test_layout_pairs_peft_keys_and_sorts_the_rest():
    arrays = {
        "base_model.model.l0.q_proj.lora_A.weight": np.zeros((4, 16)),
        "base_model.model.l0.q_proj.lora_B.weight": np.zeros((8, 4)),
        "base_model.model.l0.v_proj.lora_A.default.weight": np.zeros((2, 16)),
        "base_model.model.l0.v_proj.lora_B.default.weight": np.zeros((8, 2)),
        "coef": np.zeros((5, 3)),
        "bias": np.zeros(8),
        "thin": np.zeros((1, 9)),
        "emb.lora_embedding_A": np.zeros((4, 100)),
        "half.lora_A.weight": np.zeros((4, 16)),
    }
    layout = ArrayLayout.of(arrays)
    assert layout.lora == {
        "base_model.model.l0.q_proj": (
            "base_model.model.l0.q_proj.lora_B.weight",
            "base_model.model.l0.q_proj.lora_A.weight",
        ),
        "base_model.model.l0.v_proj.default": (
            "base_model.model.l0.v_proj.lora_B.default.weight",
            "base_model.model.l0.v_proj.lora_A.default.weight",
        ),
    }
    assert layout.matrices == ("coef",)
    assert set(layout.others) == {
        "bias",
        "thin",
        "emb.lora_embedding_A",
        "half.lora_A.weight",
    }
    assert layout.rank("base_model.model.l0.q_proj") == 4
    assert layout.modules[-1] == "coef"


def test_layout_refuses_pairs_of_different_ranks_and_empty_arrays():
    with pytest.raises(ValueError, match="same r"):
        ArrayLayout.of(
            {"m.lora_A.weight": np.zeros((3, 5)), "m.lora_B.weight": np.zeros((4, 2))}
        )
    with pytest.raises(ValueError, match="empty"):
        ArrayLayout.of({})


def test_layout_names_every_problem_of_a_reply():
    layout = ArrayLayout.of({"a": np.zeros((3, 3)), "b": np.zeros(2), "c": np.zeros(4)})
    assert (
        layout.problems({"a": np.ones((3, 3)), "b": np.ones(2), "c": np.ones(4)}) == []
    )
    found = layout.problems(
        {"a": np.full((3, 3), np.nan), "b": np.ones(3), "d": np.ones(1)}
    )
    text = " | ".join(found)
    assert "missing arrays ['c']" in text
    assert "unexpected arrays ['d']" in text
    assert "b (3,) (expected (2,))" in text
    assert "a (NaN or infinite values)" in text
    assert layout.problems(
        {"a": np.array([["x"] * 3] * 3), "b": np.ones(2), "c": np.ones(4)}
    )


# --- the round's verdict ----------------------------------------------------------


def test_one_module_verdict_and_refinement_are_clairs():
    clients = _federation()
    layout = ArrayLayout.of(clients[0])
    verdict = round_verdict(clients, layout)
    expected = clair(_factors(clients), rank=R)
    assert np.array_equal(verdict.flagged, ~expected.collaborative)
    assert set(np.flatnonzero(verdict.flagged)) == set(BAD)
    assert np.array_equal(verdict.module_p_values[0], expected.test.p_values)
    personal = refine_round(clients, layout, verdict, ~verdict.flagged)
    for k in range(len(clients)):
        mine = _product(personal[k])
        np.testing.assert_allclose(mine, expected.refined.client(k), rtol=0, atol=1e-12)


def test_several_modules_holm_over_clients_and_modules():
    clients = _federation(modules=("m0", "m1", "m2"), seed=3)
    layout = ArrayLayout.of(clients[0])
    verdict = round_verdict(clients, layout, alpha=0.05)
    p = np.array(
        [clair(_factors(clients, m), rank=R).test.p_values for m in ("m0", "m1", "m2")]
    )
    np.testing.assert_array_equal(verdict.module_p_values, p)
    rejected, adjusted = reject(p.ravel(), 0.05, "holm")
    np.testing.assert_array_equal(verdict.rejected, rejected.reshape(p.shape))
    np.testing.assert_array_equal(
        verdict.flagged, rejected.reshape(p.shape).any(axis=0)
    )
    np.testing.assert_allclose(verdict.p_values, adjusted.reshape(p.shape).min(axis=0))
    assert set(np.flatnonzero(verdict.flagged)) == set(BAD)


def test_refinement_with_another_collaborative_set_is_refine_clients():
    clients = _federation()
    layout = ArrayLayout.of(clients[0])
    verdict = round_verdict(clients, layout)
    collaborative = ~verdict.flagged
    collaborative[0] = False  # excluded by its history, say
    personal = refine_round(clients, layout, verdict, collaborative)
    result = verdict.modules[0].result
    expected = refine_clients(
        _factors(clients),
        result.detection_subspace,
        collaborative,
        sigma=result.noise.sd,
    ).refined
    for k in range(len(clients)):
        mine = _product(personal[k])
        np.testing.assert_allclose(mine, expected.client(k), atol=1e-12)
    # client 0 keeps its own arrays
    for key, value in clients[0].items():
        assert np.array_equal(personal[0][key], value)


def test_zero_updates_are_left_out_of_their_module():
    clients = _federation(modules=("m0", "m1"))
    key = "base_model.model.m1.lora_B.weight"
    clients[2] = dict(clients[2], **{key: np.zeros((P, R))})
    layout = ArrayLayout.of(clients[0])
    verdict = round_verdict(clients, layout)
    assert np.isnan(verdict.module_p_values[1, 2])
    assert not np.isnan(verdict.module_p_values[0, 2])
    personal = refine_round(clients, layout, verdict, ~verdict.flagged)
    assert np.array_equal(personal[2][key], np.zeros((P, R)))


def test_too_few_clients_give_no_verdict_and_bad_options_are_refused():
    clients = _federation(n_clients=2)
    assert round_verdict(clients, ArrayLayout.of(clients[0])) is None
    with pytest.raises(TypeError, match="correction"):
        round_verdict(
            clients, ArrayLayout.of(clients[0]), clair_options={"correction": "fdr_bh"}
        )


def test_a_module_clair_cannot_fit_is_named_and_not_tested():
    clients = _federation(modules=("m0",))
    layout = ArrayLayout.of(clients[0])
    verdict = round_verdict(clients, layout, clair_options={"rank": P})
    assert not verdict.modules[0].tested
    assert "not tested" in verdict.notes[0]
    assert not verdict.flagged.any()
    assert np.isnan(verdict.p_values).all()


# --- the global mean ------------------------------------------------------------


def test_global_lora_mean_is_the_best_rank_r_approximation():
    clients = _federation(modules=("m0",))
    clients = [dict(c, bias=np.full(3, float(k))) for k, c in enumerate(clients)]
    layout = ArrayLayout.of(clients[0])
    members = np.ones(len(clients), dtype=bool)
    members[list(BAD)] = False
    weights = np.arange(1.0, len(clients) + 1)
    mean = global_arrays(clients, layout, members, weights)
    w = weights * members / (weights * members).sum()
    dense = np.tensordot(w, _factors(clients).dense(), axes=1)
    u, s, vt = np.linalg.svd(dense)
    best = (u[:, :R] * s[:R]) @ vt[:R]
    np.testing.assert_allclose(_product(mean), best, atol=1e-10)
    np.testing.assert_allclose(mean["bias"], np.full(3, w @ np.arange(len(clients))))
    with pytest.raises(ValueError, match="empty"):
        global_arrays(clients, layout, np.zeros(len(clients), dtype=bool))


# --- the history ------------------------------------------------------------------


def test_history_catches_an_intermittent_attacker_and_forgets_a_chance_flag():
    history = ClientHistory(alpha=0.05)
    # node 1 attacks in rounds 1 and 4 (tiny p), behaves in between; node 2 is
    # benign and flagged once by chance (p = 0.01) in round 1
    attacks = {1: 1e-6, 4: 1e-6}
    released = None
    for t in range(1, 9):
        history.record(t, {1: attacks.get(t, 0.7), 2: 0.01 if t == 1 else 0.6})
        excluded = history.excluded([1, 2])
        assert excluded[0], f"the attacker re-entered in round {t}"
        if not excluded[1] and released is None:
            released = t
    # 0.01 x n <= 0.05 while n <= 5: excluded in rounds 1-5, back in round 6
    assert released == 6
    assert history.p_value(2) == pytest.approx(min(1.0, 8 * 0.01))


def test_history_window_lets_old_evidence_expire():
    history = ClientHistory(alpha=0.05, window=2)
    history.record(1, {5: 1e-9})
    for t in (2, 3):
        history.record(t, {5: 0.5})
    assert not history.excluded([5])[0]
    assert np.isnan(history.p_value(6))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        history.record(4, {5: 1.5})


# --- the strategy on Flower messages ------------------------------------------


@pytest.fixture
def flwr_app():
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    import flwr.app

    yield flwr.app
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _reply(app, node, arrays, metrics=None, error=None):
    instruction = app.Message(
        content=app.RecordDict({"config": app.ConfigRecord()}),
        dst_node_id=node,
        message_type=app.MessageType.TRAIN,
    )
    if error is not None:
        return app.Message(error=app.Error(code=0, reason=error), reply_to=instruction)
    record = app.ArrayRecord(
        {k: app.Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
    )
    content = {"arrays": record}
    if metrics is not False:
        content["metrics"] = app.MetricRecord(
            metrics or {"num-examples": 10, "loss": 1.0}
        )
    return app.Message(content=app.RecordDict(content), reply_to=instruction)


class _Grid:
    """What FedAvg's sampling asks of a Grid: the connected node ids."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def test_strategy_leaves_faulty_replies_out_with_a_log_line(flwr_app, caplog):
    from clair_stats.flower import ClairStrategy

    clients = _federation()
    nodes = [1000 + 7 * k for k in range(len(clients))]
    key = "base_model.model.m0.lora_B.weight"
    replies = [_reply(flwr_app, n, c) for n, c in zip(nodes, clients, strict=True)]
    replies += [
        _reply(flwr_app, 1, None, error="out of memory"),
        _reply(flwr_app, 2, dict(clients[0], **{key: clients[0][key][:-1]})),
        _reply(flwr_app, 3, dict(clients[0], **{key: np.full((P, R), np.nan)})),
        _reply(flwr_app, 4, {k: v for k, v in clients[0].items() if k != key}),
        _reply(flwr_app, 5, clients[0], metrics=False),
        _reply(flwr_app, 6, clients[0], metrics={"num-examples": 0}),
    ]
    strategy = ClairStrategy()
    logging.getLogger("flwr").propagate = True
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, replies[::-1])
    report = strategy.rounds[-1]
    assert report.node_ids == tuple(nodes)
    assert sorted(report.left_out) == [1, 2, 3, 4, 5, 6]
    reasons = report.left_out
    assert "out of memory" in reasons[1]
    assert "expected" in reasons[2]
    assert "NaN" in reasons[3]
    assert "missing arrays" in reasons[4]
    assert "num-examples" in reasons[5]
    assert "num-examples" in reasons[6]
    for node in range(1, 7):
        assert f"reply of node {node} left out" in caplog.text
    # the valid replies give clair's verdict, in node order
    expected = clair(_factors(clients), rank=R)
    assert report.flagged_nodes == [nodes[k] for k in expected.flagged]
    assert metrics["clair-flagged"] == report.flagged_nodes
    assert metrics["clair-node-ids"] == nodes
    np.testing.assert_array_equal(metrics["clair-p-values"], report.p_values)
    np.testing.assert_array_equal(
        metrics["clair-history-p-values"], report.history_p_values
    )
    restored = flwr_app.MetricRecord.inflate(metrics.deflate())  # travels as is
    assert restored["clair-node-ids"] == nodes
    assert metrics["clair-n-left-out"] == 6
    assert metrics["clair-n-clients"] == len(clients)
    assert metrics["loss"] == pytest.approx(1.0)
    assert set(arrays.keys()) == set(clients[0])


def test_strategy_sends_each_node_its_refined_arrays(flwr_app):
    from clair_stats.flower import ClairStrategy

    clients = _federation()
    nodes = list(range(10, 10 + len(clients)))
    strategy = ClairStrategy()
    grid = _Grid(nodes + [99])  # node 99 joins later: it gets the global arrays
    initial = flwr_app.ArrayRecord(
        {k: flwr_app.Array(np.zeros_like(v)) for k, v in clients[0].items()}
    )
    strategy.configure_train(1, initial, flwr_app.ConfigRecord(), grid)
    arrays, _ = strategy.aggregate_train(
        1, [_reply(flwr_app, n, c) for n, c in zip(nodes, clients, strict=True)]
    )
    expected = clair(_factors(clients), rank=R)
    messages = strategy.configure_train(2, arrays, flwr_app.ConfigRecord(), grid)
    sent = {m.metadata.dst_node_id: m.content["arrays"] for m in messages}
    assert set(sent) == set(nodes) | {99}
    for k, node in enumerate(nodes):
        mine = _product({key: a.numpy() for key, a in sent[node].items()})
        np.testing.assert_allclose(mine, expected.refined.client(k), atol=1e-12)
        assert (
            sent[node]["base_model.model.m0.lora_A.weight"].numpy().dtype == np.float64
        )
    assert sent[99].object_id == arrays.object_id
    assert messages[0].content["config"]["server-round"] == 2
    evaluation = strategy.configure_evaluate(2, arrays, flwr_app.ConfigRecord(), grid)
    assert {m.metadata.dst_node_id for m in evaluation} == set(nodes) | {99}
    off = ClairStrategy(personalise=False)
    off.configure_train(1, initial, flwr_app.ConfigRecord(), grid)
    off.aggregate_train(
        1, [_reply(flwr_app, n, c) for n, c in zip(nodes, clients, strict=True)]
    )
    again = off.configure_train(2, arrays, flwr_app.ConfigRecord(), grid)
    assert all(m.content["arrays"].object_id == arrays.object_id for m in again)


def test_strategy_history_across_rounds_and_fallbacks(flwr_app, caplog):
    from clair_stats.flower import ClairStrategy

    strategy = ClairStrategy()
    nodes = list(range(20, 30))
    # round 1: clients 7 and 8 attack; round 2: everyone is benign
    attack = _federation(seed=1)
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.standard_normal((P, R)))[0]
    calm = [
        _adapter(rng, k, ("m0",), basis) if k not in BAD else None for k in range(10)
    ]
    for k in BAD:
        calm[k] = _adapter(np.random.default_rng(k), 0, ("m0",), basis)
    strategy.aggregate_train(
        1, [_reply(flwr_app, n, c) for n, c in zip(nodes, attack, strict=True)]
    )
    assert strategy.rounds[0].flagged_nodes == [nodes[k] for k in BAD]
    strategy.aggregate_train(
        2, [_reply(flwr_app, n, c) for n, c in zip(nodes, calm, strict=True)]
    )
    second = strategy.rounds[1]
    assert second.flagged_nodes == []
    assert second.excluded_nodes == [nodes[k] for k in BAD]  # by their history
    assert strategy.rounds[0].verdict is None
    assert second.verdict is not None
    # two replies: no test, the mean of the clients the history does not exclude
    logging.getLogger("flwr").propagate = True
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(
            3, [_reply(flwr_app, nodes[k], calm[k]) for k in (0, 7)]
        )
    assert "CLAIR needs 3" in caplog.text
    assert metrics["clair-tested"] == 0.0
    expected = global_arrays([calm[0]], ArrayLayout.of(calm[0]), np.array([True]))
    for key, value in expected.items():
        np.testing.assert_allclose(arrays[key].numpy(), value)
    # nothing valid: nothing to aggregate
    assert strategy.aggregate_train(4, [_reply(flwr_app, 1, None, error="x")]) == (
        None,
        None,
    )


def test_strategy_refuses_options_it_sets(flwr_app):
    from clair_stats.flower import ClairStrategy

    with pytest.raises(TypeError, match="alpha"):
        ClairStrategy(clair_options={"alpha": 0.1})
    with pytest.raises(ValueError, match="side"):
        ClairStrategy(side="middle")


def test_strategy_evaluation_leaves_faulty_replies_out(flwr_app, caplog):
    from clair_stats.flower import ClairStrategy

    def reply(node, metrics=None, error=None):
        instruction = flwr_app.Message(
            content=flwr_app.RecordDict({"config": flwr_app.ConfigRecord()}),
            dst_node_id=node,
            message_type=flwr_app.MessageType.EVALUATE,
        )
        if error is not None:
            return flwr_app.Message(
                error=flwr_app.Error(code=0, reason=error), reply_to=instruction
            )
        content = flwr_app.RecordDict({"metrics": flwr_app.MetricRecord(metrics)})
        return flwr_app.Message(content=content, reply_to=instruction)

    replies = [
        reply(1, {"num-examples": 10, "accuracy": 0.5}),
        reply(2, {"num-examples": 30, "accuracy": 0.9}),
        reply(3, {"accuracy": 0.0}),
        reply(4, error="crashed"),
    ]
    logging.getLogger("flwr").propagate = True
    with caplog.at_level(logging.WARNING, logger="flwr"):
        metrics = ClairStrategy().aggregate_evaluate(1, replies)
    assert metrics["accuracy"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)
    assert "evaluation reply of node 3 left out" in caplog.text
    assert "evaluation reply of node 4 left out" in caplog.text
    assert ClairStrategy().aggregate_evaluate(1, replies[2:]) is None


def test_strategy_outlives_a_failure_of_clair(flwr_app, caplog, monkeypatch):
    from clair_stats.flower import ClairStrategy, strategy

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(strategy, "round_verdict", broken)
    clients = _federation()
    nodes = list(range(len(clients)))
    logging.getLogger("flwr").propagate = True
    with caplog.at_level(logging.ERROR, logger="flwr"):
        arrays, metrics = ClairStrategy().aggregate_train(
            1, [_reply(flwr_app, n, c) for n, c in zip(nodes, clients, strict=True)]
        )
    assert "CLAIR failed (LinAlgError: SVD did not converge)" in caplog.text
    assert metrics["clair-tested"] == 0.0
    expected = global_arrays(clients, ArrayLayout.of(clients[0]), np.ones(10, bool))
    for key, value in expected.items():
        np.testing.assert_allclose(arrays[key].numpy(), value)


def test_strategy_takes_the_most_common_usable_layout(flwr_app):
    from clair_stats.flower import ClairStrategy

    bad = {"m.lora_A.weight": np.ones((3, 5)), "m.lora_B.weight": np.ones((4, 2))}
    good = {"m.lora_A.weight": np.ones((2, 5)), "m.lora_B.weight": np.ones((4, 2))}
    strategy = ClairStrategy()
    replies = [_reply(flwr_app, n, bad) for n in (1, 2, 3)]
    arrays, _ = strategy.aggregate_train(1, [*replies, _reply(flwr_app, 4, good)])
    report = strategy.rounds[-1]
    assert report.node_ids == (4,)
    assert sorted(report.left_out) == [1, 2, 3]
    assert "expected (2, 5)" in report.left_out[1]
    np.testing.assert_allclose(
        arrays["m.lora_B.weight"].numpy() @ arrays["m.lora_A.weight"].numpy(),
        good["m.lora_B.weight"] @ good["m.lora_A.weight"],
    )
    assert strategy.aggregate_train(2, replies) == (None, None)
    assert "no reply has a usable layout" in strategy.rounds[-1].left_out[1]
