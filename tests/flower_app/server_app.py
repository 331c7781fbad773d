"""ServerApp of the test app: one strategy, its per-round records in a summary.

Flower loads this file as the top-level module ``server_app``. The ServerApp

1. waits for ``num-nodes`` nodes and asks each for its partition id (a query
   message), as node ids are random and only the ClientApp knows its partition;
2. builds the strategy named by ``strategy`` in the run config (``clair``:
   :class:`clair_stats.flower.ClairStrategy`, ``fedavg``: Flower's FedAvg),
   wrapped so that it records every round after ``aggregate_train``;
3. runs ``strategy.start`` for ``num-server-rounds`` rounds from PEFT's initial
   adapter (B = 0, A = 0);
4. writes the records to ``summary-path`` (if set): a JSON file and, next to it,
   an ``.npz`` with the arrays (numpy only, no pickle), each written to a temporary
   name and renamed, so that a reader never sees half a file.

In Flower's deployment runtime (and with ``flwr run`` on a simulation SuperLink)
the ServerApp runs in a process of its own, so the summary file is how a test
sees what the strategy did. ``flwr.simulation.run_simulation`` runs it in a
thread of the calling process; :func:`make_server_app` then also takes a
callback that receives the strategy itself.

The JSON holds ``strategy``, ``num_rounds``, ``partitions`` (pairs node id,
partition id) and ``rounds``: per round ``server_round``, ``replied`` and
``errors`` (node ids of the train replies with content and with an error),
``metrics`` (the aggregated MetricRecord), and for CLAIR ``node_ids`` (the
clients analysed, in order), ``partition_ids``, ``flagged``, ``excluded``,
``p_values``, ``left_out`` (pairs node id, reason) and ``modules``. The npz
holds ``round<t>/global/<key>`` (the returned arrays) and, for CLAIR,
``round<t>/node<id>/<key>`` (each node's refined arrays after round t).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from client_app import from_record, initial_adapter, settings, to_record
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """The node ids once at least ``count`` nodes are connected."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(nodes)} of {count} nodes after {timeout} s")
        time.sleep(0.2)


def partition_ids(grid: Grid, nodes: list[int], timeout: float) -> dict[int, int]:
    """Node id -> partition id, asked of every node with a query message."""
    ask = RecordDict({"config": ConfigRecord({"ask": "partition-id"})})
    messages = [
        Message(ask, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
    ]
    out = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error}")
        out[reply.metadata.src_node_id] = int(reply.content["info"]["partition-id"])
    missing = sorted(set(nodes) - set(out))
    if missing:
        raise RuntimeError(f"no partition id from nodes {missing}")
    return out


def recording(base: type) -> type:
    """``base`` (a Flower strategy class) that records each round's outcome."""

    class Recording(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.records: list[dict[str, Any]] = []
            self.record_arrays: dict[str, np.ndarray] = {}

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            arrays, metrics = super().aggregate_train(server_round, replies)
            self._record(server_round, replies, arrays, metrics)
            return arrays, metrics

        def _record(self, server_round, replies, arrays, metrics) -> None:
            entry: dict[str, Any] = {
                "server_round": server_round,
                "replied": [
                    m.metadata.src_node_id for m in replies if not m.has_error()
                ],
                "errors": [m.metadata.src_node_id for m in replies if m.has_error()],
                "metrics": {} if metrics is None else dict(metrics),
            }
            prefix = f"round{server_round}"
            for key, value in ({} if arrays is None else from_record(arrays)).items():
                self.record_arrays[f"{prefix}/global/{key}"] = value
            reports = getattr(self, "rounds", None)
            if reports:
                report = reports[-1]
                if report.server_round != server_round:
                    raise RuntimeError(
                        f"last report is of round {report.server_round}, "
                        f"not {server_round}"
                    )
                nodes = [int(n) for n in report.node_ids]
                entry.update(
                    node_ids=nodes,
                    flagged=[bool(x) for x in report.flagged],
                    excluded=[bool(x) for x in report.excluded],
                    p_values=[float(x) for x in report.p_values],
                    left_out=[[int(n), str(r)] for n, r in report.left_out.items()],
                    modules=list(report.modules),
                )
                for node in nodes:
                    refined = self.refined_arrays(node)
                    if refined is None:
                        continue
                    for key, value in from_record(refined).items():
                        self.record_arrays[f"{prefix}/node{node}/{key}"] = value
            self.records.append(entry)

    Recording.__name__ = Recording.__qualname__ = f"Recording{base.__name__}"
    return Recording


def build_strategy(cfg: Mapping[str, Any]):
    """The strategy of the run config, recording its rounds."""
    nodes = int(cfg["num-nodes"])
    fraction_evaluate = float(cfg["fraction-evaluate"])
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": nodes,
        "min_evaluate_nodes": nodes if fraction_evaluate > 0 else 0,
        "min_available_nodes": nodes,
    }
    name = str(cfg["strategy"])
    if name == "fedavg":
        return recording(FedAvg)(**common)
    if name == "clair":
        from clair_stats.flower import ClairStrategy

        rank = int(cfg["clair-rank"])
        return recording(ClairStrategy)(
            **common,
            alpha=float(cfg["alpha"]),
            clair_options={"rank": rank} if rank > 0 else None,
        )
    raise ValueError(f"strategy {name!r} is not 'clair' or 'fedavg'")


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        write(f)
    os.replace(tmp, path)


def write_summary(
    path: str | os.PathLike[str], summary: dict[str, Any], arrays: dict
) -> None:
    """``path`` (JSON) and ``path`` with suffix ``.npz``, each renamed into place;
    the npz first, so that a complete JSON means a complete npz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    npz = path.with_suffix(".npz")
    _atomic_write(npz, lambda f: np.savez(f, **arrays))
    text = json.dumps({**summary, "arrays": npz.name}, indent=1)
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def run(grid: Grid, cfg: Mapping[str, Any], on_finish: Callable | None = None):
    """Steps 1-4 of the module docstring; returns (strategy, summary)."""
    timeout = float(cfg["round-timeout"])
    nodes = wait_for_nodes(grid, int(cfg["num-nodes"]), timeout)
    partitions = partition_ids(grid, nodes, timeout)
    log(INFO, "partition ids by node id: %s", partitions)
    strategy = build_strategy(cfg)
    initial = initial_adapter(
        int(cfg["num-modules"]), int(cfg["dim"]), int(cfg["lora-rank"])
    )
    strategy.start(
        grid=grid,
        initial_arrays=to_record(initial),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=timeout,
    )
    for entry in strategy.records:
        if "node_ids" in entry:
            entry["partition_ids"] = [partitions.get(n, -1) for n in entry["node_ids"]]
    summary = {
        "strategy": str(cfg["strategy"]),
        "num_rounds": int(cfg["num-server-rounds"]),
        "partitions": sorted([n, p] for n, p in partitions.items()),
        "rounds": strategy.records,
    }
    if cfg["summary-path"]:
        write_summary(cfg["summary-path"], summary, strategy.record_arrays)
        log(
            INFO,
            "summary of %d rounds in %s",
            len(summary["rounds"]),
            cfg["summary-path"],
        )
    if on_finish is not None:
        on_finish(strategy, summary)
    return strategy, summary


def make_server_app(
    overrides: Mapping[str, Any] | None = None, on_finish: Callable | None = None
) -> ServerApp:
    """The ServerApp; ``overrides`` as in :func:`client_app.settings`,
    ``on_finish(strategy, summary)`` called at the end (in-process runs only)."""
    server = ServerApp()
    fixed = dict(overrides or {})

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run(grid, settings(context.run_config, fixed), on_finish)

    return server


app = make_server_app()
