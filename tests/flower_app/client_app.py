"""ClientApp of the test app: a synthetic LoRA adapter per node and round.

Flower loads this file as the top-level module ``client_app`` (the app directory is
on ``sys.path``), so it imports nothing from its own folder; ``server_app`` and the
tests import :func:`settings` and :func:`synthetic_adapter` from it.

The ClientApp ignores the arrays it receives except for their names and shapes:
for every ``<module>.lora_B.weight`` (out x r) / ``<module>.lora_A.weight``
(r x in) pair it sends back a fresh draw of :func:`synthetic_adapter`, seeded by
the run config's ``seed``, the node's ``partition-id`` and the server round, and
its ``num-examples`` in a MetricRecord. A query message is answered with the
node's partition id, so that the ServerApp can map node ids to partitions.

``faulty`` in the run config makes chosen partitions misbehave in chosen rounds:
a comma-separated list of ``<partition>:<mode>[@<round>]`` with mode ``error``
(the ClientApp raises, the reply carries an error), ``shape`` (the first B has
one row too few) or ``nan`` (the first B starts with a NaN); without ``@<round>``
in every round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

#: The LoRA modules, in PEFT's naming (the first ``num-modules`` are used).
MODULES = ("base_model.model.layers.0.q_proj", "base_model.model.layers.0.v_proj")
SUFFIX_A, SUFFIX_B = ".lora_A.weight", ".lora_B.weight"


def _defaults() -> dict[str, Any]:
    """[tool.flwr.app.config] of the app's pyproject.toml (next to this file)."""
    path = Path(__file__).with_name("pyproject.toml")
    with path.open("rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def settings(
    run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The app's defaults, then the run config, then ``overrides``.

    ``overrides`` stand in for ``flwr run --run-config`` where no run config
    reaches the apps (``flwr.simulation.run_simulation`` gives both an empty one).
    """
    out = _defaults()
    out.update(run_config)
    out.update(overrides or {})
    return out


def partition_list(text: str) -> list[int]:
    """``"1,4"`` -> ``[1, 4]`` (empty text: none)."""
    return [int(x) for x in str(text).replace(" ", "").split(",") if x]


def faulty_mode(text: str, partition_id: int, server_round: int) -> str | None:
    """The mode of ``partition_id`` in ``server_round`` in a ``faulty`` spec."""
    for item in str(text).replace(" ", "").split(","):
        if not item:
            continue
        who, _, what = item.partition(":")
        mode, _, when = what.partition("@")
        if mode not in ("error", "shape", "nan"):
            raise ValueError(f"faulty mode {mode!r} is not error, shape or nan")
        if int(who) == partition_id and (not when or int(when) == server_round):
            return mode
    return None


def lora_modules(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Module -> (out, r, in) from the names and shapes of a LoRA state dict."""
    out = {}
    for key, shape in shapes.items():
        if key.endswith(SUFFIX_B):
            module = key[: -len(SUFFIX_B)]
            rows, rank = shape
            out[module] = (int(rows), int(rank), int(shapes[module + SUFFIX_A][1]))
    return out


def initial_adapter(num_modules: int, dim: int, rank: int) -> dict[str, np.ndarray]:
    """PEFT's initial state: B = 0, A = 0 (only the names and shapes matter)."""
    arrays = {}
    for module in MODULES[:num_modules]:
        arrays[module + SUFFIX_A] = np.zeros((rank, dim))
        arrays[module + SUFFIX_B] = np.zeros((dim, rank))
    return arrays


def synthetic_adapter(
    seed: int,
    partition_id: int,
    server_round: int,
    modules: Mapping[str, tuple[int, int, int]],
    *,
    contaminated: bool,
    noise: float,
) -> dict[str, np.ndarray]:
    """One client's LoRA factors (float64), deterministic in its arguments.

    Module m (out x in, rank r) has a shared orthonormal basis Q_m (out x 2r),
    drawn from ``seed`` and m only. A benign client has B = Q_m[:, :r] C + noise E,
    a contaminated one B = Q_m[:, r:] C + noise E (the other r directions), with
    C (r x r) and E (out x r) standard normal, and A = F / sqrt(in), F (r x in)
    standard normal; C, E, F are drawn from (seed, m, partition, round).
    """
    arrays = {}
    for m, (module, (out, rank, inp)) in enumerate(modules.items()):
        basis = np.random.default_rng([seed, 0, m]).standard_normal((out, 2 * rank))
        q = np.linalg.qr(basis)[0]
        span = q[:, rank:] if contaminated else q[:, :rank]
        rng = np.random.default_rng([seed, 1, m, partition_id, server_round])
        b = span @ rng.standard_normal((rank, rank))
        b = b + noise * rng.standard_normal((out, rank))
        a = rng.standard_normal((rank, inp)) / np.sqrt(inp)
        arrays[module + SUFFIX_A] = a
        arrays[module + SUFFIX_B] = b
    return arrays


def num_examples(partition_id: int) -> int:
    """The weight a partition reports (distinct per partition)."""
    return 20 + 4 * partition_id


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as an ArrayRecord (order kept)."""
    return ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as named numpy arrays (order kept)."""
    return {k: v.numpy() for k, v in record.items()}


def make_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` as in :func:`settings`."""
    client = ClientApp()
    fixed = dict(overrides or {})

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        info = MetricRecord({"partition-id": pid})
        return Message(RecordDict({"info": info}), reply_to=msg)

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = settings(context.run_config, fixed)
        pid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        received = msg.content["arrays"]
        modules = lora_modules({k: v.shape for k, v in received.items()})
        arrays = synthetic_adapter(
            int(cfg["seed"]),
            pid,
            server_round,
            modules,
            contaminated=pid in partition_list(cfg["contaminated"]),
            noise=float(cfg["noise"]),
        )
        mode = faulty_mode(cfg["faulty"], pid, server_round)
        first_b = next(k for k in arrays if k.endswith(SUFFIX_B))
        if mode == "error":
            raise RuntimeError(
                f"partition {pid} fails on purpose in round {server_round}"
            )
        if mode == "shape":
            arrays[first_b] = arrays[first_b][1:]
        if mode == "nan":
            arrays[first_b][0, 0] = np.nan
        metrics = MetricRecord({"num-examples": num_examples(pid), "partition-id": pid})
        content = RecordDict({"arrays": to_record(arrays), "metrics": metrics})
        return Message(content, reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        metrics = MetricRecord({"num-examples": num_examples(pid), "loss": 0.0})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return client


app = make_client_app()
