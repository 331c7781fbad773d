"""CLAIR as a Flower strategy (Message API, ``flwr.serverapp``; the ``flower`` extra).

:class:`ClairStrategy` is Flower's :class:`~flwr.serverapp.strategy.FedAvg` with
the aggregation replaced by CLAIR (docs/flower.md): a Flower app switches from
FedAvg to CLAIR by changing the class it builds, with the same arguments. Each
round it

1. checks every reply and leaves out, with a log line naming the node and the
   reason, those that carry an error, miss arrays, have wrong shapes,
   non-numeric or non-finite values, or no weight (``num-examples``);
2. runs :func:`clair_stats.clair` on every module (LoRA factors or matrices,
   :mod:`clair_stats.flower.layout`) and combines the modules into one verdict
   per client: Holm over the (client, module) p-values
   (:func:`clair_stats.flower.rounds.round_verdict`);
3. adds each client's p-value to its history and excludes the clients that this
   round flags or whose history convicts them (Holm over its rounds,
   :mod:`clair_stats.flower.evidence`);
4. refines every other client (step 4 of CLAIR per module) and keeps the result
   as the client's personalised arrays, which
   :meth:`ClairStrategy.configure_train` and
   :meth:`ClairStrategy.configure_evaluate` send to it next round; a node seen
   for the first time gets the global arrays;
5. returns the global arrays, the weighted mean over the collaborative clients
   (LoRA modules as the rank-r truncated SVD of the mean update), and a
   :class:`~flwr.app.MetricRecord` with the clients' train metrics averaged over
   the same clients and the round's flags, p-values and solver diagnostics (keys
   ``clair-*``, docs/flower.md §9.4).

With fewer than 3 valid replies no test is possible: the round averages the
clients the history does not exclude and every client keeps its own arrays (a
warning says so). If every client is excluded the global arrays stay as they
were (``None`` is returned, which Flower's loop keeps).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING

import numpy as np

from clair_stats.core.optional import require
from clair_stats.core.validation import check_alpha, check_choice
from clair_stats.flower.evidence import ClientHistory
from clair_stats.flower.layout import ArrayLayout
from clair_stats.flower.rounds import (
    MIN_CLIENTS,
    RESERVED_OPTIONS,
    RoundVerdict,
    global_arrays,
    refine_round,
    round_verdict,
)

require("flwr", "flower", "clair_stats.flower.ClairStrategy")

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore import log  # noqa: E402

__all__ = ["ClairStrategy", "RoundReport"]


@dataclass(frozen=True)
class RoundReport:
    """What :class:`ClairStrategy` did in one round.

    Parameters
    ----------
    server_round : int
        The Flower round number.
    node_ids : tuple of int
        The clients analysed (valid replies), in increasing node id.
    flagged : numpy.ndarray of bool, shape (K,)
        This round's verdict (all False when the round was not tested).
    excluded : numpy.ndarray of bool, shape (K,)
        Left out of S^ and of the global mean: flagged now or by the history.
    p_values : numpy.ndarray, shape (K,)
        This round's p-value per client (NaN: none).
    history_p_values : numpy.ndarray, shape (K,)
        P_kT of :class:`~clair_stats.flower.evidence.ClientHistory` after this
        round (NaN without a history).
    left_out : dict of int to str
        Node id -> why its reply was not used.
    modules : tuple of str
        The modules CLAIR analysed.
    verdict : RoundVerdict or None
        The per-module tests (:class:`~clair_stats.flower.rounds.RoundVerdict`);
        None when fewer than 3 clients replied. Kept for the latest round only.
    notes : tuple of str
        Modules not tested and CLAIR's warnings, "<module>: <note>".
    seconds : float
        Time spent in CLAIR (steps 1-4 and the global mean).
    """

    server_round: int
    node_ids: tuple[int, ...]
    flagged: np.ndarray = field(repr=False)
    excluded: np.ndarray = field(repr=False)
    p_values: np.ndarray = field(repr=False)
    history_p_values: np.ndarray = field(repr=False)
    left_out: dict[int, str] = field(default_factory=dict)
    modules: tuple[str, ...] = ()
    verdict: RoundVerdict | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def flagged_nodes(self) -> list[int]:
        """Node ids flagged this round."""
        return [n for n, f in zip(self.node_ids, self.flagged, strict=True) if f]

    @property
    def excluded_nodes(self) -> list[int]:
        """Node ids excluded this round (flagged or by their history)."""
        return [n for n, f in zip(self.node_ids, self.excluded, strict=True) if f]


class ClairStrategy(FedAvg):
    """CLAIR in Flower: flag contaminated clients, personalise the others.

    A subclass of Flower's :class:`~flwr.serverapp.strategy.FedAvg` (Message API)
    that replaces its aggregation by CLAIR per module, one verdict per client
    combined over the modules and over the rounds, and personalised refined
    arrays (module docstring; docs/flower.md). Replace ``FedAvg(...)`` by
    ``ClairStrategy(...)``: the arguments of FedAvg keep their meaning.

    Parameters
    ----------
    fraction_train, fraction_evaluate : float
        Fractions of the connected nodes sampled for training and evaluation.
    min_train_nodes, min_evaluate_nodes, min_available_nodes : int
        As in FedAvg. CLAIR tests a round with at least 3 valid replies.
    weighted_by_key : str
        The metric of each reply that weighs it in the global mean and in the
        averaged metrics (FedAvg's rule, over the collaborative clients only).
    arrayrecord_key, configrecord_key : str
        Keys of the ArrayRecord and ConfigRecord in the messages.
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn : callable, optional
        As in FedAvg; the train metrics are aggregated over the collaborative
        clients.
    alpha : float
        Family-wise level of each round's test (Holm over the K x M (client,
        module) pairs) and of each client's history (Holm over its rounds).
    side : {"left", "right"}
        Every module's clients share its output space (``"left"``: the column
        space of Delta W = B A) or its input space.
    personalise : bool
        Send each node its own refined arrays in the next round's training and
        evaluation messages (the global arrays to nodes not seen yet); False
        sends everyone the global arrays, as FedAvg does.
    history : bool
        Combine each client's evidence over the rounds
        (:class:`~clair_stats.flower.evidence.ClientHistory`); False excludes
        only the clients flagged in the round itself.
    window : int, optional
        Count only each client's last ``window`` rounds in its history.
    clair_options : mapping, optional
        Keyword arguments of :func:`clair_stats.clair` for every module (e.g.
        ``rank``, ``lam``, ``tol``), except ``alpha``, ``correction``, ``side``,
        ``refined_rank`` and ``weights``, which the strategy sets.

    Attributes
    ----------
    rounds : list of RoundReport
        One report per round aggregated.
    history : ClientHistory or None
        Each client's p-values over the rounds.

    Examples
    --------
    In a Flower ``ServerApp``::

        from clair_stats.flower import ClairStrategy

        # was FedAvg(...); min_train_nodes=K: Flower samples from the nodes
        # connected when a round starts, and CLAIR needs at least 3 replies
        strategy = ClairStrategy(fraction_train=1.0, min_train_nodes=K)
        result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=5)
        for report in strategy.rounds:
            print(report.server_round, report.flagged_nodes)
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord]
        | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord]
        | None = None,
        *,
        alpha: float = 0.05,
        side: str = "left",
        personalise: bool = True,
        history: bool = True,
        window: int | None = None,
        clair_options: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self.alpha = check_alpha(alpha)
        self.side = check_choice(side, "side", ("left", "right"))
        if not isinstance(personalise, bool) or not isinstance(history, bool):
            raise TypeError("personalise and history must be True or False.")
        self.personalise = personalise
        self.clair_options = dict(clair_options or {})
        taken = sorted(set(self.clair_options) & set(RESERVED_OPTIONS))
        if taken:
            raise TypeError(
                f"clair_options may not set {taken}: pass alpha and side to "
                "ClairStrategy; the correction (Holm over clients and modules), "
                "the refined rank (each client's LoRA rank) and the weights are "
                "the strategy's."
            )
        self.history = ClientHistory(alpha, window) if history else None
        self.rounds: list[RoundReport] = []
        self._personal: dict[int, dict[str, np.ndarray]] = {}
        self._sent: ArrayLayout | None = None

    # --- what the strategy is ------------------------------------------------

    def summary(self) -> None:
        """Log the configuration (Flower's sampling and keys, then CLAIR's)."""
        super().summary()
        log(INFO, "\t└──> CLAIR:")
        log(INFO, "\t\t├── alpha: %g (Holm over clients x modules)", self.alpha)
        log(INFO, "\t\t├── side: %s", self.side)
        log(INFO, "\t\t├── personalise: %s", self.personalise)
        log(
            INFO,
            "\t\t├── history: %s",
            "off"
            if self.history is None
            else f"Holm over each client's rounds (window {self.history.window})",
        )
        log(INFO, "\t\t└── clair options: %s", self.clair_options or "defaults")

    def refined_arrays(self, node_id: int) -> ArrayRecord | None:
        """The node's personalised arrays after the latest round (None if unseen).

        Parameters
        ----------
        node_id : int
            The Flower node id of the client.

        Returns
        -------
        ArrayRecord or None
            The client's refined arrays (its own, if it was excluded), or None
            for a node that has not replied in a trained round yet.
        """
        arrays = self._personal.get(int(node_id))
        return None if arrays is None else _record(arrays)

    # --- sending ---------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as FedAvg does; send each its own arrays (module docstring).

        A node without personalised arrays yet, or whose arrays no longer fit
        the layout of ``arrays``, gets the global arrays.

        Parameters
        ----------
        server_round : int
            The Flower round number.
        arrays : ArrayRecord
            The global arrays (the latest weighted mean over the collaborative
            clients).
        config : ConfigRecord
            The training configuration sent to every node.
        grid : Grid
            Flower's grid, from which the nodes are sampled.

        Returns
        -------
        iterable of Message
            One train message per sampled node.
        """
        self._sent = _layout_or_none(arrays)
        messages = super().configure_train(server_round, arrays, config, grid)
        return self._personalised(messages, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as FedAvg does; each evaluates its own arrays.

        Parameters
        ----------
        server_round : int
            The Flower round number.
        arrays : ArrayRecord
            The global arrays, sent to the nodes without personalised arrays.
        config : ConfigRecord
            The evaluation configuration sent to every node.
        grid : Grid
            Flower's grid, from which the nodes are sampled.

        Returns
        -------
        iterable of Message
            One evaluate message per sampled node.
        """
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        return self._personalised(messages, MessageType.EVALUATE)

    def _personalised(
        self, messages: Iterable[Message], message_type: str
    ) -> list[Message]:
        messages = list(messages)
        if not self.personalise or not self._personal or not messages:
            return messages
        out, sent = [], 0
        for message in messages:
            node = message.metadata.dst_node_id
            own = self._personal.get(node)
            if own is None or (
                self._sent is not None and self._sent.problems(own) != []
            ):
                out.append(message)
                continue
            content = RecordDict(
                {
                    self.arrayrecord_key: _record(own),
                    self.configrecord_key: message.content[self.configrecord_key],
                }
            )
            out.append(
                Message(content=content, message_type=message_type, dst_node_id=node)
            )
            sent += 1
        log(
            INFO,
            "ClairStrategy: personalised arrays to %d of %d nodes (the others get "
            "the global arrays)",
            sent,
            len(out),
        )
        return out

    # --- aggregating -----------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, run CLAIR, keep the refined arrays, return the mean.

        Parameters
        ----------
        server_round : int
            The Flower round number.
        replies : iterable of Message
            The nodes' train replies: arrays under ``arrayrecord_key`` and
            metrics with ``weighted_by_key`` (``num-examples``).

        Returns
        -------
        arrays : ArrayRecord or None
            The weighted mean over the collaborative clients (None if nothing
            could be aggregated: Flower keeps the previous arrays).
        metrics : MetricRecord or None
            The collaborative clients' train metrics and the ``clair-*`` keys.
        """
        start = time.perf_counter()
        nodes, clients, weights, contents, left_out = self._check(replies)
        for node, reason in left_out.items():
            log(
                WARNING,
                "ClairStrategy: round %d: reply of node %d left out: %s",
                server_round,
                node,
                reason,
            )
        n_clients = len(nodes)
        if n_clients == 0:
            log(WARNING, "ClairStrategy: round %d: no valid reply", server_round)
            self.rounds.append(_empty_report(server_round, left_out))
            return None, None
        layout = ArrayLayout.of(clients[0])
        try:
            verdict = round_verdict(
                clients,
                layout,
                alpha=self.alpha,
                side=self.side,
                clair_options=self.clair_options,
            )
            failed = None
        except Exception as exc:  # a server must outlive one bad round
            verdict, failed = None, exc
        if failed is not None:
            log(
                ERROR,
                "ClairStrategy: round %d: CLAIR failed (%s: %s); no test this round: "
                "the global arrays are the mean over the clients the history does "
                "not exclude, and every client keeps its own arrays",
                server_round,
                type(failed).__name__,
                failed,
            )
            flagged = np.zeros(n_clients, dtype=bool)
            p_values = np.full(n_clients, np.nan)
        elif verdict is None:
            log(
                WARNING,
                "ClairStrategy: round %d: %d valid repl%s, CLAIR needs %d; no test "
                "this round: the global arrays are the mean over the clients the "
                "history does not exclude, and every client keeps its own arrays",
                server_round,
                n_clients,
                "y" if n_clients == 1 else "ies",
                MIN_CLIENTS,
            )
            flagged = np.zeros(n_clients, dtype=bool)
            p_values = np.full(n_clients, np.nan)
        else:
            flagged, p_values = verdict.flagged, verdict.p_values
            if self.history is not None:
                self.history.record(
                    server_round, dict(zip(nodes, p_values.tolist(), strict=True))
                )
        by_history = (
            self.history.excluded(nodes)
            if self.history is not None
            else np.zeros(n_clients, dtype=bool)
        )
        excluded = flagged | by_history
        collaborative = ~excluded
        personal = [dict(c) for c in clients]
        if verdict is not None and collaborative.any():
            try:
                personal = refine_round(
                    clients, layout, verdict, collaborative, side=self.side
                )
            except Exception as exc:  # a server must outlive one bad round
                log(
                    ERROR,
                    "ClairStrategy: round %d: the refinement failed (%s: %s); every "
                    "client keeps its own arrays this round",
                    server_round,
                    type(exc).__name__,
                    exc,
                )
        for node, arrays in zip(nodes, personal, strict=True):
            self._personal[node] = arrays
        aggregate = None
        if collaborative.any():
            try:
                aggregate = _record(
                    global_arrays(clients, layout, collaborative, np.asarray(weights))
                )
            except Exception as exc:  # a server must outlive one bad round
                log(
                    ERROR,
                    "ClairStrategy: round %d: the global mean failed (%s: %s); the "
                    "global arrays stay as they were",
                    server_round,
                    type(exc).__name__,
                    exc,
                )
        else:
            log(
                WARNING,
                "ClairStrategy: round %d: every client is excluded; the global "
                "arrays stay as they were",
                server_round,
            )
        report = RoundReport(
            server_round=server_round,
            node_ids=tuple(nodes),
            flagged=flagged,
            excluded=excluded,
            p_values=p_values,
            history_p_values=np.array(
                [self.history.p_value(n) for n in nodes]
                if self.history is not None
                else [np.nan] * n_clients
            ),
            left_out=left_out,
            modules=layout.modules,
            verdict=verdict,
            notes=tuple(verdict.notes) if verdict is not None else (),
            seconds=time.perf_counter() - start,
        )
        if self.rounds and self.rounds[-1].verdict is not None:
            # keep the per-module results of the latest round only
            last = self.rounds[-1]
            self.rounds[-1] = RoundReport(**{**last.__dict__, "verdict": None})
        self.rounds.append(report)
        self._log(report)
        return aggregate, self._metrics(report, contents, collaborative)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Average the evaluation metrics as FedAvg does, over the valid replies.

        A reply that is an error or has no positive ``weighted_by_key`` is left
        out with a log line (FedAvg would stop the aggregation of every reply).

        Parameters
        ----------
        server_round : int
            The Flower round number.
        replies : iterable of Message
            The nodes' evaluate replies, with metrics and ``weighted_by_key``.

        Returns
        -------
        MetricRecord or None
            The valid replies' metrics aggregated by ``evaluate_metrics_aggr_fn``
            (FedAvg's weighted mean by default); None when no reply is valid or
            the aggregation fails.
        """
        kept = []
        for message in replies:
            node = int(message.metadata.src_node_id)
            reason = (
                f"the reply is an error ({message.error.reason})"
                if message.has_error()
                else _weight(message.content, self.weighted_by_key)
            )
            if isinstance(reason, str):
                log(
                    WARNING,
                    "ClairStrategy: round %d: evaluation reply of node %d left out: %s",
                    server_round,
                    node,
                    reason,
                )
                continue
            kept.append(message.content)
        if not kept:
            return None
        try:
            return self.evaluate_metrics_aggr_fn(kept, self.weighted_by_key)
        except (TypeError, ValueError, KeyError) as exc:
            log(
                WARNING,
                "ClairStrategy: round %d: evaluation metrics not aggregated (%s)",
                server_round,
                exc,
            )
            return None

    def _check(self, replies: Iterable[Message]):
        """Valid replies (sorted by node id) and the reasons for the others."""
        left_out: dict[int, str] = {}
        found: dict[int, tuple[dict[str, np.ndarray], float, RecordDict]] = {}
        for message in replies:
            node = int(message.metadata.src_node_id)
            if message.has_error():
                left_out[node] = f"the reply is an error ({message.error.reason})"
                continue
            if node in found:
                left_out[node] = "a second reply from the same node"
                continue
            content = message.content
            record = content.array_records.get(self.arrayrecord_key)
            if record is None:
                left_out[node] = (
                    f"no ArrayRecord under {self.arrayrecord_key!r} (it has "
                    f"{sorted(content.array_records)})"
                )
                continue
            weight = _weight(content, self.weighted_by_key)
            if isinstance(weight, str):
                left_out[node] = weight
                continue
            try:
                arrays = {key: array.numpy() for key, array in record.items()}
            except Exception as exc:  # an array Flower cannot deserialise
                left_out[node] = f"its arrays cannot be read ({exc})"
                continue
            found[node] = (arrays, weight, content)
        if not found:
            return [], [], [], [], left_out
        reference = self._reference([arrays for arrays, _, _ in found.values()])
        nodes, clients, weights, contents = [], [], [], []
        for node in sorted(found):
            arrays, weight, content = found[node]
            problems = (
                [reference]
                if isinstance(reference, str)
                else reference.problems(arrays)
            )
            if problems:
                left_out[node] = "; ".join(problems)
                continue
            nodes.append(node)
            clients.append(arrays)
            weights.append(weight)
            contents.append(content)
        return nodes, clients, weights, contents, left_out

    def _reference(self, candidates: list[dict[str, np.ndarray]]) -> ArrayLayout | str:
        """The layout replies must have: the one sent if a reply has it, else the
        most common usable one among the replies (or why there is none)."""
        signatures = [
            frozenset((k, tuple(np.shape(v))) for k, v in arrays.items())
            for arrays in candidates
        ]
        if self._sent is not None:
            sent = frozenset(self._sent.shapes.items())
            if sent in signatures:
                return self._sent
        reasons = []
        for common, _ in Counter(signatures).most_common():
            try:
                return ArrayLayout.of(candidates[signatures.index(common)])
            except ValueError as exc:
                reasons.append(str(exc))
        return "no reply has a usable layout (" + "; ".join(reasons) + ")"

    def _metrics(
        self,
        report: RoundReport,
        contents: list[RecordDict],
        collaborative: np.ndarray,
    ) -> MetricRecord:
        kept = [c for c, m in zip(contents, collaborative, strict=True) if m]
        metrics = MetricRecord()
        if kept:
            try:
                metrics = self.train_metrics_aggr_fn(kept, self.weighted_by_key)
            except (TypeError, ValueError, KeyError) as exc:
                log(
                    WARNING,
                    "ClairStrategy: round %d: train metrics not aggregated (%s)",
                    report.server_round,
                    exc,
                )
        verdict = report.verdict
        p = report.p_values[~np.isnan(report.p_values)]
        metrics["clair-n-clients"] = len(report.node_ids)
        metrics["clair-n-flagged"] = int(report.flagged.sum())
        metrics["clair-n-excluded"] = int(report.excluded.sum())
        metrics["clair-n-left-out"] = len(report.left_out)
        metrics["clair-flagged"] = [int(n) for n in report.flagged_nodes]
        metrics["clair-excluded"] = [int(n) for n in report.excluded_nodes]
        metrics["clair-left-out"] = [int(n) for n in report.left_out]
        metrics["clair-node-ids"] = [int(n) for n in report.node_ids]
        metrics["clair-p-values"] = [float(x) for x in report.p_values]
        metrics["clair-history-p-values"] = [float(x) for x in report.history_p_values]
        metrics["clair-min-p-value"] = float(p.min()) if p.size else 1.0
        metrics["clair-tested"] = 1.0 if verdict is not None else 0.0
        metrics["clair-max-iterations"] = verdict.iterations if verdict else 0
        metrics["clair-converged"] = (
            1.0 if verdict is None or verdict.converged else 0.0
        )
        metrics["clair-seconds"] = float(report.seconds)
        return metrics

    def _log(self, report: RoundReport) -> None:
        log(
            INFO,
            "ClairStrategy: round %d: %d clients, %d modules; flagged %s; "
            "excluded (flagged or by history) %s; left out %s; %.2f s",
            report.server_round,
            len(report.node_ids),
            len(report.modules),
            report.flagged_nodes,
            report.excluded_nodes,
            sorted(report.left_out),
            report.seconds,
        )
        for node, p, h in zip(
            report.node_ids, report.p_values, report.history_p_values, strict=True
        ):
            log(INFO, "\t node %d: p-value %.3g, history %.3g", node, p, h)
        for note in report.notes:
            log(WARNING, "ClairStrategy: round %d: %s", report.server_round, note)
        if report.flagged.sum() * 2 >= len(report.node_ids) and report.flagged.any():
            log(
                WARNING,
                "ClairStrategy: round %d: %d of %d clients flagged; CLAIR assumes "
                "a benign majority, so the verdict is not reliable here: check "
                "the clients or the module shapes, or lower alpha",
                report.server_round,
                int(report.flagged.sum()),
                len(report.node_ids),
            )


def _weight(content: RecordDict, key: str) -> float | str:
    """The reply's weight, or the reason it has none."""
    values = [r[key] for r in content.metric_records.values() if key in r]
    if not values:
        return f"no MetricRecord holds {key!r}"
    value = values[0]
    if isinstance(value, list) or not np.isfinite(value) or value <= 0:
        return f"its {key!r} is {value!r}, not a positive number"
    return float(value)


def _layout_or_none(arrays: ArrayRecord) -> ArrayLayout | None:
    try:
        return ArrayLayout.of({k: a.numpy() for k, a in arrays.items()})
    except ValueError:
        return None


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _empty_report(server_round: int, left_out: dict[int, str]) -> RoundReport:
    empty = np.zeros(0)
    return RoundReport(
        server_round,
        (),
        empty.astype(bool),
        empty.astype(bool),
        empty,
        empty,
        left_out,
    )
