"""ServerApp: pretrain (cached), broadcast a common LoRA init, run the strategy.

``strategy`` in the run config picks ``"clair"``
(:class:`clair_stats.flower.ClairStrategy`: each client gets back its own refined
adapter, flagged clients their own), ``"fedavg"`` or ``"fedmedian"`` (Flower's
:class:`~flwr.serverapp.strategy.FedAvg` / ``FedMedian`` on the LoRA factors:
every client gets the same global adapter), or ``"local"`` (a reference: no
federation, each client keeps fine-tuning its own adapter). Every round the
clients train, then evaluate what the strategy sends them; the evaluation
MetricRecord holds ``accuracy`` (all clients), ``benign-accuracy`` and
``contaminated-accuracy``.

At the end the ServerApp logs one line per round and writes a JSON summary to
``<cache>/runs/<strategy>-seed<seed>-<run id>.json`` (per-round, per-client
accuracy by partition id, CLAIR's flags by partition id, times).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from flower_copying import task

app = ServerApp()

STRATEGIES = ("clair", "fedavg", "fedmedian", "local")


def evaluate_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Mean accuracy over all clients, over the benign and the contaminated ones.

    Unweighted means (every client has ``n-test`` sequences); the signature is
    Flower's ``evaluate_metrics_aggr_fn`` (``weighted_by_key`` is not used).
    """
    rows = [record["metrics"] for record in records]
    acc = np.array([float(m["accuracy"]) for m in rows])
    benign = np.array([float(m["benign"]) > 0.5 for m in rows])
    out = MetricRecord(
        {
            "accuracy": float(acc.mean()),
            "n-clients": len(rows),
        }
    )
    if benign.any():
        out["benign-accuracy"] = float(acc[benign].mean())
    if (~benign).any():
        out["contaminated-accuracy"] = float(acc[~benign].mean())
    return out


def train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Flower's weighted mean of the clients' train metrics, without partition-id."""
    out = aggregate_metricrecords(records, weighted_by_key)
    out.pop("partition-id", None)
    return out


def _recording(base: type) -> type:
    """``base`` that also records, per round, each client's metrics by partition id."""

    class Recording(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.partition_of: dict[int, int] = {}
            self.train_by_client: dict[int, dict[int, dict[str, float]]] = {}
            self.evaluate_by_client: dict[int, dict[int, dict[str, float]]] = {}

        def _note(self, replies: list[Message]) -> dict[int, dict[str, float]]:
            out = {}
            for msg in replies:
                if msg.has_error():
                    continue
                metrics = msg.content["metrics"]
                client = int(metrics["partition-id"])
                self.partition_of[msg.metadata.src_node_id] = client
                out[client] = {k: float(v) for k, v in metrics.items()}
            return dict(sorted(out.items()))

        def aggregate_train(
            self, server_round: int, replies: Iterable[Message]
        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            replies = list(replies)
            self.train_by_client[server_round] = self._note(replies)
            return super().aggregate_train(server_round, replies)

        def aggregate_evaluate(
            self, server_round: int, replies: Iterable[Message]
        ) -> MetricRecord | None:
            replies = list(replies)
            self.evaluate_by_client[server_round] = self._note(replies)
            return super().aggregate_evaluate(server_round, replies)

    Recording.__name__ = Recording.__qualname__ = base.__name__
    return Recording


class LocalOnly(FedAvg):
    """Reference without federation: every client keeps training its own adapter.

    Round 1 sends the common initial adapter; from then on each node gets back
    the factors it sent last (in training and in evaluation). The global arrays
    (FedAvg's mean) are computed but sent to no one.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.own: dict[int, dict[str, np.ndarray]] = {}

    def _own(self, messages: Iterable[Message]) -> list[Message]:
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self.own:
                out.append(msg)
                continue
            arrays = ArrayRecord({k: Array(v) for k, v in self.own[node].items()})
            content = RecordDict(
                {
                    self.arrayrecord_key: arrays,
                    self.configrecord_key: msg.content[self.configrecord_key],
                }
            )
            out.append(
                Message(
                    content=content,
                    message_type=msg.metadata.message_type,
                    dst_node_id=node,
                )
            )
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._own(super().configure_train(server_round, arrays, config, grid))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        return self._own(messages)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for msg in replies:
            if not msg.has_error():
                record = msg.content[self.arrayrecord_key]
                self.own[msg.metadata.src_node_id] = {
                    k: np.array(record[k].numpy()) for k in record.keys()
                }
        return super().aggregate_train(server_round, replies)


def make_strategy(name: str, n_clients: int, run_config: dict[str, Any]):
    """The strategy ``name``, sampling all ``n_clients`` clients every round."""
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": n_clients,
        "min_evaluate_nodes": n_clients,
        "min_available_nodes": n_clients,
        "train_metrics_aggr_fn": train_metrics,
        "evaluate_metrics_aggr_fn": evaluate_metrics,
    }
    if name == "fedavg":
        return _recording(FedAvg)(**common)
    if name == "fedmedian":
        return _recording(FedMedian)(**common)
    if name == "local":
        return _recording(LocalOnly)(**common)
    if name == "clair":
        from clair_stats.flower import ClairStrategy

        rank = int(run_config["clair-rank"])
        return _recording(ClairStrategy)(
            **common,
            alpha=float(run_config["clair-alpha"]),
            personalise=bool(run_config["clair-personalise"]),
            history=bool(run_config["clair-history"]),
            clair_options={"rank": rank} if rank > 0 else None,
        )
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")


def _clair_rounds(strategy: Any) -> dict[int, dict[str, Any]]:
    """CLAIR's per-round verdicts by partition id (empty for other strategies)."""
    out = {}
    for report in getattr(strategy, "rounds", []):
        clients = [strategy.partition_of.get(n, -1) for n in report.node_ids]
        flagged = np.asarray(report.flagged, dtype=bool)
        excluded = np.asarray(report.excluded, dtype=bool)
        out[int(report.server_round)] = {
            "clients": clients,
            "flagged": sorted(c for c, f in zip(clients, flagged, strict=True) if f),
            "excluded": sorted(c for c, f in zip(clients, excluded, strict=True) if f),
            "p_values": {
                c: float(p) for c, p in zip(clients, report.p_values, strict=True)
            },
            "left_out": {
                strategy.partition_of.get(n, -1): str(why)
                for n, why in report.left_out.items()
            },
        }
    return out


def _check_nodes(grid: Grid, n_clients: int, wait: float = 30.0) -> None:
    """Fail with a hint when the federation does not have ``num-clients`` nodes.

    Flower's sampling would otherwise wait forever for missing nodes (the
    simulation's default is 2 SuperNodes).
    """
    deadline = time.monotonic() + wait
    while (n := len(list(grid.get_node_ids()))) < n_clients:
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if n != n_clients:
        raise RuntimeError(
            f"the federation has {n} SuperNodes but num-clients = {n_clients}: run "
            f'with --federation-config "num-supernodes={n_clients}" (or set '
            "num-clients to the federation's size)."
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Pretrain or load the base model, run the strategy, log and save a summary."""
    run_config = dict(context.run_config)
    name = str(run_config["strategy"]).lower()
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")
    n_clients = int(run_config["num-clients"])
    seed = int(run_config["seed"])
    rounds = int(run_config["num-server-rounds"])
    settings = task.make_settings(run_config, n_clients)
    kinds = task.client_kinds(settings)
    cache = task.cache_dir(run_config)
    _check_nodes(grid, n_clients)

    start = time.perf_counter()
    initial = task.initial_arrays(settings, cache / "checkpoints", seed)
    pretrain_seconds = time.perf_counter() - start
    log(
        INFO,
        "flower_copying: strategy %s, K = %d (contaminated: %s), seed %d, %d rounds "
        "of %d local steps; base model ready in %.1f s (cache %s)",
        name,
        n_clients,
        [k for k, kind in enumerate(kinds) if kind != "benign"],
        seed,
        rounds,
        settings.ft_steps,
        pretrain_seconds,
        cache / "checkpoints",
    )

    strategy = make_strategy(name, n_clients, run_config)
    start = time.perf_counter()
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=rounds,
        train_config=ConfigRecord({"local-steps": settings.ft_steps}),
    )
    seconds = time.perf_counter() - start

    clair = _clair_rounds(strategy)
    summary_rounds = []
    for r in range(1, rounds + 1):
        evaluated = strategy.evaluate_by_client.get(r, {})
        trained = strategy.train_by_client.get(r, {})
        agg = result.evaluate_metrics_clientapp.get(r)
        row = {
            "round": r,
            "benign_accuracy": None if agg is None else agg.get("benign-accuracy"),
            "contaminated_accuracy": (
                None if agg is None else agg.get("contaminated-accuracy")
            ),
            "accuracy": {c: m["accuracy"] for c, m in evaluated.items()},
            "local_accuracy": {c: m["local-accuracy"] for c, m in trained.items()},
            "train_loss": {c: m["train-loss"] for c, m in trained.items()},
        }
        if r in clair:
            row["clair"] = clair[r]
        summary_rounds.append(row)
        log(
            INFO,
            "flower_copying round %d: benign accuracy %s, contaminated %s%s",
            r,
            _fmt(row["benign_accuracy"]),
            _fmt(row["contaminated_accuracy"]),
            (
                f"; CLAIR flagged {clair[r]['flagged']}, excluded "
                f"{clair[r]['excluded']} (partition ids)"
                if r in clair
                else ""
            ),
        )
    summary = {
        "strategy": name,
        "seed": seed,
        "run_id": int(context.run_id),
        "kinds": kinds,
        "run_config": run_config,
        "pretrain_seconds": pretrain_seconds,
        "strategy_seconds": seconds,
        "rounds": summary_rounds,
    }
    out_dir = cache / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-seed{seed}-{context.run_id}.json"
    try:
        path.write_text(json.dumps(summary, indent=1, default=str))
        log(INFO, "flower_copying: summary written to %s", path)
    except OSError as exc:
        log(WARNING, "flower_copying: could not write %s (%s)", path, exc)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
