"""Table of the runs' JSON summaries: benign accuracy per strategy over seeds.

``python -m flower_copying.summarise [RUNS_DIR]`` (from ``examples/flower_copying``;
default ``~/.cache/clair_stats/flower_copying/runs``) prints, for each run
configuration (the run config without ``strategy``, ``seed`` and the paths), a
Markdown table of the last round: the mean over seeds of the benign clients' mean
accuracy with a 95% t interval, the same for the contaminated clients, CLAIR's
benign accuracy minus the strategy's, paired by seed (same data and
initialisation), and the mean time of ``strategy.start``. For CLAIR it also
lists, per seed, the clients flagged in each round.
When a (strategy, seed) pair was run more than once the newest file counts.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from flower_copying.task import cache_dir

_NOT_CONFIG = ("strategy", "seed", "cache-dir", "repo-root")


def _interval(values: list[float], sign: str = "") -> str:
    """Mean and 95% t interval over seeds (``sign="+"`` prints the signs)."""
    if any(v is None for v in values):
        return "n/a"
    x = np.asarray(values, dtype=float)
    if x.size == 1:
        return f"{x[0]:{sign}.3f} (1 seed)"
    half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    low, mean, high = x.mean() - half, x.mean(), x.mean() + half
    return f"{mean:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def load(folder: Path) -> dict[str, dict[tuple[str, int], dict]]:
    """Newest summary per (strategy, seed), grouped by run configuration."""
    groups: dict[str, dict[tuple[str, int], dict]] = defaultdict(dict)
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
        run = json.loads(path.read_text())
        config = {k: v for k, v in run["run_config"].items() if k not in _NOT_CONFIG}
        key = json.dumps(config, sort_keys=True)
        groups[key][(run["strategy"], int(run["seed"]))] = run
    return groups


def table(runs: dict[tuple[str, int], dict]) -> str:
    """Markdown table of the last round per strategy, then CLAIR's flags."""
    by_strategy: dict[str, list[dict]] = defaultdict(list)
    for (name, _), run in sorted(runs.items()):
        by_strategy[name].append(run)
    lines = [
        "| strategy | seeds | benign accuracy | contaminated accuracy "
        "| CLAIR - this, benign (paired) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    clair = {
        seed: run["rounds"][-1]["benign_accuracy"]
        for (name, seed), run in runs.items()
        if name == "clair"
    }
    flags = []
    for name in ("clair", "fedavg", "fedmedian", "local"):
        if name not in by_strategy:
            continue
        group = by_strategy[name]
        last = [run["rounds"][-1] for run in group]
        benign = [row["benign_accuracy"] for row in last]
        contaminated = [row["contaminated_accuracy"] for row in last]
        seconds = np.mean([run["strategy_seconds"] for run in group])
        paired = [
            clair[run["seed"]] - row["benign_accuracy"]
            for run, row in zip(group, last, strict=True)
            if run["seed"] in clair
        ]
        difference = _interval(paired, "+") if paired and name != "clair" else ""
        lines.append(
            f"| {name} | {len(group)} | {_interval(benign)} | "
            f"{_interval(contaminated)} | {difference} | {seconds:.0f} |"
        )
        if name == "clair":
            for run in group:
                per_round = [
                    f"r{row['round']}: {row['clair']['flagged']}"
                    + (
                        f" (excluded {row['clair']['excluded']})"
                        if row["clair"]["excluded"] != row["clair"]["flagged"]
                        else ""
                    )
                    for row in run["rounds"]
                    if "clair" in row
                ]
                flags.append(f"- seed {run['seed']}: " + "; ".join(per_round))
    names = [n for n in ("clair", "fedavg", "fedmedian", "local") if n in by_strategy]
    n_rounds = min(
        len(run["rounds"]) for group in by_strategy.values() for run in group
    )
    lines += [
        "",
        "Benign accuracy per round (mean over seeds):",
        "",
        "| round | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for r in range(n_rounds):
        means = [
            np.mean([run["rounds"][r]["benign_accuracy"] for run in by_strategy[n]])
            for n in names
        ]
        lines.append(f"| {r + 1} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    if flags:
        lines += ["", "CLAIR flagged (partition ids):", *flags]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0]) if argv else cache_dir({}) / "runs"
    groups = load(folder)
    if not groups:
        print(f"no run summaries in {folder}")
        return 1
    for key, runs in groups.items():
        print(f"run config: {key}\n")
        print(table(runs))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
