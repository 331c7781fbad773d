"""Benchmark ``clair adapters`` on an adapter set of the shape of a 7B model.

The federation: K clients, each with a PEFT LoRA adapter (rank 16, lora_alpha 32,
fp16 on disk) on the 7 projections of each of the 32 decoder layers of a
Llama-7B-shaped model: q, k, v, o (4096 x 4096), gate and up (11008 x 4096) and
down (4096 x 11008), 224 modules, about 80 MB per client. Client k's module m:

    B_km = U_m G_km + nu_m E_km,   A_km = F_km / sqrt(in_m),

U_m (out_m x 16) orthonormal and shared, G, E, F iid N(0, 1), nu_m = 1.2 /
sqrt(out_m) (the noise has 0.3 times the signal's Frobenius norm, and every client
has its own 16-dimensional column space: the generic case, R = 16 K); 10% of the
clients are contaminated in every module (B_km = 3 * 16 E_km / ||E_km||_F, off the
shared subspace, three times the benign norm).

Measured, each in its own process (files written just before, so read from the
page cache):

* **run**: ``python -m clair_stats adapters DIR... --out OUT --jobs J`` end to end
  (reading, CLAIR per module, verdict, refinement, the K refined adapters in
  float32, the report): wall time and the peak of the summed resident memory of
  the command and its workers (sampled every 0.1 s with psutil);
* **floor**: the least any method must do on the same files with the same J
  processes: read every module of every client (memory-mapped, fp16 -> float64)
  and compute each client's thin QRs B_k = Q R and A_k^T = Q R;
* **per module**: one module of each shape, in one process with one BLAS thread:
  reading, steps 1-2 (of which the core solve), step 4, and the cost of writing.

K = 20 is run on all 224 modules. K = 50 and 100 are run on a sample of
``--sample-layers`` layers (7 modules each, L >= 2) and on one layer, and
extrapolated to 32 layers along the line through the two: T(32) = T(L) + (32 -
L) (T(L) - T(1)) / (L - 1), so that the fixed costs (starting the process and
the workers, the null law of the z-scores, the last module's tail) are counted
once. The report gives the proportional extrapolation 32 T(L) / L, an upper
bound, beside it.

Targets (2-core machine): K = 20 under 5 minutes, K = 50 under 10 minutes
(extrapolated), peak memory under 4 GB, wall time at most 5 times the floor.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy
from _provenance import blas, command_line, source_digest

import clair_stats

LAYERS = 32
KINDS: dict[str, tuple[int, int]] = {
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (4096, 4096),
    "self_attn.v_proj": (4096, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (11008, 4096),
    "mlp.up_proj": (11008, 4096),
    "mlp.down_proj": (4096, 11008),
}
RANK, ALPHA, NOISE, GAMMA, STRENGTH, SEED = 16, 32, 0.3, 0.1, 3.0, 2026
TARGETS = {"K20_seconds": 300.0, "K50_seconds": 600.0, "memory_mb": 4096.0}
FLOOR_RATIO = 5.0


def modules(layers: int) -> dict[str, tuple[int, int]]:
    """Module path -> (out, in) of the first ``layers`` decoder layers."""
    return {
        f"model.layers.{i}.{kind}": shape
        for i in range(layers)
        for kind, shape in KINDS.items()
    }


def contaminated(n_clients: int) -> list[int]:
    """The contaminated clients: every tenth, from client 3 (at least one)."""
    bad = list(range(3, n_clients, 10))[: max(1, round(GAMMA * n_clients))]
    return bad or [0]


def write_federation(root: Path, n_clients: int, layers: int) -> list[Path]:
    """K PEFT folders ``root/client<k>`` (fp16), one client in memory at a time."""
    from safetensors.numpy import save_file

    shapes = modules(layers)
    shared_rng = np.random.default_rng(SEED)
    shared = {
        m: np.linalg.qr(shared_rng.standard_normal((out, RANK)))[0]
        for m, (out, _) in shapes.items()
    }
    bad = set(contaminated(n_clients))
    folders = []
    for k in range(n_clients):
        rng = np.random.default_rng([SEED, k])
        tensors = {}
        for m, (out, inp) in shapes.items():
            noise = rng.standard_normal((out, RANK))
            if k in bad:
                b = STRENGTH * RANK * noise / np.linalg.norm(noise)
            else:
                b = shared[m] @ rng.standard_normal((RANK, RANK))
                b += NOISE * 4.0 / np.sqrt(out) * noise
            a = rng.standard_normal((RANK, inp)) / np.sqrt(inp)
            tensors[f"base_model.model.{m}.lora_B.weight"] = b.astype(np.float16)
            tensors[f"base_model.model.{m}.lora_A.weight"] = a.astype(np.float16)
        folder = root / f"client{k:03d}"
        folder.mkdir(parents=True)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": "llama-7b-shaped",
            "r": RANK,
            "lora_alpha": ALPHA,
            "target_modules": sorted(kind.split(".")[-1] for kind in KINDS),
        }
        (folder / "adapter_config.json").write_text(json.dumps(config))
        folders.append(folder)
    return folders


# -- measuring ------------------------------------------------------------------


def monitored(argv: list[str], env: dict | None = None) -> dict:
    """Run ``argv``; its wall time and the peak of its process tree's summed RSS."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    root = psutil.Process(process.pid)
    peak = 0.0
    while process.poll() is None:
        total = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, total / 2**20)
        time.sleep(0.1)
    out, err = process.communicate()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{argv[:4]}... failed ({process.returncode}):\n{err}")
    return {"seconds": seconds, "peak_mb": peak, "stdout": out, "stderr": err}


def floor_module(adapters, name: str) -> float:
    """Read one module of every client and compute each client's thin QRs."""
    start = time.perf_counter()
    updates = adapters.updates(name)
    for b, a in zip(updates.B, updates.A, strict=True):
        np.linalg.qr(b)
        np.linalg.qr(a.T)
    return time.perf_counter() - start


def floor_child(folders: list[str], jobs: int) -> None:
    """The floor on ``jobs`` processes (run as a child: ``--floor-child``)."""
    from clair_stats.core.parallel import map_unordered
    from clair_stats.lora.peft import read_adapters

    adapters = read_adapters(folders)
    tasks = [(adapters, name) for name in adapters.module_names]
    seconds = [s for _, s in map_unordered(floor_module, tasks, jobs=jobs)]
    print(json.dumps({"module_seconds": seconds}))


#: Parts of a module's work: (column, file, function) whose cumulative time the
#: profile of :func:`per_module` reports.
PARTS = (
    ("reduction", "factored.py", "reduce_updates"),
    ("core solve", "admm.py", "admm_p0"),
    ("trimmed refit", "estimator.py", "trimmed"),
    ("refit on S^", "linalg.py", "top_subspace"),
    ("shrinkage", "refine.py", "in_subspace_shrinkage"),
    ("refine_factored", "factored.py", "refine_factored"),
    ("write", "numpy.py", "save_file"),
)


def _cumulative(profile, part: tuple[str, str, str]) -> float:
    """Seconds inside one function (cumulative, all its calls) of a cProfile."""
    import pstats

    _, file, function = part
    stats = pstats.Stats(profile).stats
    return sum(
        entry[3]
        for (path, _, name), entry in stats.items()
        if name == function and path.endswith(file)
    )


def per_module(
    folders: list[Path], names: list[str], rank: int | None = None
) -> list[dict]:
    """Where the time goes on one module, in this process with one BLAS thread."""
    import cProfile
    import warnings

    from threadpoolctl import threadpool_limits

    from clair_stats.lora.adapters import combine_modules, fit_adapter_module
    from clair_stats.lora.peft import read_adapters
    from clair_stats.lora.writing import refine_adapter_module

    adapters = read_adapters(folders)
    rows = []
    with threadpool_limits(1), tempfile.TemporaryDirectory() as tmp:
        # the verdict needs every module: fit the chosen ones, take S^ from them
        fits = {}
        for name in names:
            start = time.perf_counter()
            adapters.updates(name)
            read = time.perf_counter() - start
            profile = cProfile.Profile()
            outcome = profile.runcall(fit_adapter_module, adapters, name, rank)
            fits[name] = (outcome, read, profile)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = combine_modules(
                _only(adapters, names), [fits[n][0] for n in names]
            )
        for i, name in enumerate(names):
            outcome, read, profile = fits[name]
            profile.runcall(
                refine_adapter_module,
                adapters,
                result.modules[i],
                result.collaborative,
                "left",
                None,
                "float32",
                Path(tmp) / f"{i}.safetensors",
            )
            row = {
                "module": name,
                "shape": outcome.shape,
                "read": read,
                "iterations": outcome.fit.solver.iterations,
                "fit": _cumulative(profile, ("", "adapters.py", "fit_adapter_module")),
                "refine": _cumulative(
                    profile, ("", "writing.py", "refine_adapter_module")
                ),
            }
            row.update({part[0]: _cumulative(profile, part) for part in PARTS})
            rows.append(row)
    return rows


def _only(adapters, names):
    """The adapter set restricted to ``names`` (for the verdict of a sample)."""
    from dataclasses import replace

    from clair_stats.lora.peft import AdapterSet

    return AdapterSet(
        tuple(
            replace(a, modules={n: a.modules[n] for n in names})
            for a in adapters.adapters
        )
    )


def run_case(
    root: Path, n_clients: int, layers: int, jobs: int, rank: int | None = None
) -> dict:
    """Write the federation, measure the floor and the run, check the flags."""
    inputs = root / f"in-{n_clients}-{layers}"
    start = time.perf_counter()
    folders = write_federation(inputs, n_clients, layers)
    written = time.perf_counter() - start
    size_mb = sum(f.stat().st_size for d in folders for f in d.iterdir()) / 2**20
    names = [str(f) for f in folders]
    floor = monitored(
        [sys.executable, __file__, "--floor-child", str(jobs), *names],
    )
    module_seconds = json.loads(floor["stdout"])["module_seconds"]
    out = root / f"out-{n_clients}-{layers}"
    run = monitored(
        [
            sys.executable,
            "-m",
            "clair_stats",
            "adapters",
            *names,
            "--out",
            str(out),
            "--jobs",
            str(jobs),
            "--no-progress",
            *([] if rank is None else ["--rank", str(rank)]),
        ]
    )
    report = json.loads((out / "clair_report.json").read_text())
    flagged = [k for k, c in enumerate(report["clients"]) if c["flagged"]]
    fit = [m["seconds"]["fit"] for m in report["modules"]]
    refine = [m["seconds"]["refine"] for m in report["modules"]]
    iterations = [m["solver"]["iterations"] for m in report["modules"]]
    shutil.rmtree(out)
    return {
        "K": n_clients,
        "rank": rank,
        "layers": layers,
        "modules": len(report["modules"]),
        "input_mb": size_mb,
        "write_seconds": written,
        "seconds": run["seconds"],
        "peak_mb": run["peak_mb"],
        "floor_seconds": floor["seconds"],
        "floor_module_seconds": float(np.mean(module_seconds)),
        "floor_peak_mb": floor["peak_mb"],
        "fit_module_seconds": float(np.mean(fit)),
        "refine_module_seconds": float(np.mean(refine)),
        "iterations": [int(np.min(iterations)), int(np.max(iterations))],
        "flags_ok": flagged == contaminated(n_clients),
        "flagged": flagged,
        "folders": names,
    }


# -- the report -----------------------------------------------------------------


def header(
    args: argparse.Namespace, when: str, argv: Sequence[str] | None = None
) -> list[str]:
    """The report's provenance lines.

    Parameters
    ----------
    args : argparse.Namespace
        The options (``jobs``).
    when : str
        The start time.
    argv : sequence of str, optional
        The command line (default ``sys.argv``).

    Returns
    -------
    list of str
    """
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        "# clair adapters at the size of a 7B model",
        "",
        f"- date: {when} (1-min load average {load:.2f} at start)",
        f"- machine: {platform.platform()}, os.cpu_count() = {os.cpu_count()}, "
        f"Python {platform.python_version()}",
        f"- versions: numpy {np.__version__}, scipy {scipy.__version__}, "
        f"clair_stats {clair_stats.__version__} (source sha1 {source_digest()}); "
        f"BLAS: {blas()}",
        f"- command: `{command_line(sys.argv if argv is None else argv)}`",
        f"- adapters: {LAYERS} layers x {len(KINDS)} modules (q, k, v, o 4096 x "
        f"4096; gate, up 11008 x 4096; down 4096 x 11008), rank {RANK}, fp16, "
        f"every client its own column space (noise {NOISE} of the signal), "
        f"{GAMMA:.0%} contaminated; `--jobs {getattr(args, 'jobs', '?')}`, "
        f"`--rank {getattr(args, 'rank', None) or 'default (16)'}`",
    ]


def extrapolate(one: float, sample: float, layers: int) -> dict:
    """Wall time at 32 layers from the runs at 1 and ``layers`` layers.

    Along the line through the two (fixed costs once), and proportionally to the
    sample (an upper bound); the per-layer slope and the fixed part as well.
    """
    if layers < 2:
        raise ValueError("--sample-layers must be at least 2 to extrapolate.")
    slope = (sample - one) / (layers - 1)
    return {
        "one_layer_seconds": one,
        "layer_seconds": slope,
        "fixed_seconds": one - slope,
        "extrapolated": sample + (LAYERS - layers) * slope,
        "proportional": sample * LAYERS / layers,
    }


def mark(ok: bool) -> str:
    """MET / NOT MET."""
    return "**MET**" if ok else "**NOT MET**"


def report(cases: list[dict], modules_rows: list[dict], args, when: str) -> str:
    """The Markdown report."""
    lines = header(args, when)
    lines += [
        "",
        "## End to end",
        "",
        "| K | modules | run | wall s | 224 modules, s (proportional) "
        "| peak MB | floor s | wall / floor "
        "| s per module (fit / refine, in a worker) "
        "| core sweeps | input MB | flags correct |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        sampled = c["layers"] < LAYERS
        total = (
            f"{c['extrapolated']:.0f} ({c['proportional']:.0f})"
            if sampled
            else f"{c['seconds']:.0f}"
        )
        lines.append(
            f"| {c['K']} | {c['modules']} | "
            f"{'sample' if sampled else 'measured'} | {c['seconds']:.1f} | "
            f"{total} | {c['peak_mb']:.0f} | {c['floor_seconds']:.1f} | "
            f"{c['seconds'] / c['floor_seconds']:.1f} | "
            f"{c['fit_module_seconds']:.2f} / {c['refine_module_seconds']:.2f} | "
            f"{c['iterations'][0]}-{c['iterations'][1]} | {c['input_mb']:.0f} | "
            f"{'yes' if c['flags_ok'] else 'no'} ({len(c['flagged'])}) |"
        )
    lines += [
        "",
        "wall: the command in a fresh process, workers started, files in the page "
        "cache; peak MB: the summed resident memory of the command and its workers "
        "(shared library pages counted in each); floor: reading every module of "
        "every client and each client's two thin QRs, on the same number of "
        "processes. A sample is extrapolated along the line through its wall "
        "time and that of one layer (fixed costs once; in parentheses, "
        "proportionally).",
        "",
    ]
    for c in cases:
        if c["layers"] < LAYERS:
            lines.append(
                f"- K = {c['K']}: one layer {c['one_layer_seconds']:.1f} s, "
                f"{c['layer_seconds']:.1f} s per further layer, fixed "
                f"{c['fixed_seconds']:.1f} s."
            )
    lines += [
        "",
        "## Where the time goes on one module (one process, one BLAS thread)",
        "",
        "Seconds inside each part (cProfile, cumulative); reading is done twice, "
        "once per phase.",
        "",
        "| K | module | shape | read | steps 1-2 | reduction | core solve (sweeps) "
        "| trimmed refit | step 4 + write | refit on S^ | shrinkage "
        "| refine_factored | write |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in modules_rows:
        lines.append(
            f"| {r['K']} | {r['module'].split('.', 3)[-1]} | "
            f"{r['shape'][0]} x {r['shape'][1]} | {r['read']:.2f} | {r['fit']:.2f} | "
            f"{r['reduction']:.2f} | {r['core solve']:.2f} ({r['iterations']}) | "
            f"{r['trimmed refit']:.2f} | {r['refine']:.2f} | {r['refit on S^']:.2f} | "
            f"{r['shrinkage']:.2f} | {r['refine_factored']:.2f} | {r['write']:.2f} |"
        )
    lines += ["", "## Targets", ""]
    by_k = {c["K"]: c for c in cases}
    for k, limit in ((20, TARGETS["K20_seconds"]), (50, TARGETS["K50_seconds"])):
        if k in by_k:
            c = by_k[k]
            total = c["extrapolated"]
            how = "measured" if c["layers"] == LAYERS else "extrapolated"
            lines.append(
                f"- K = {k} under {limit:.0f} s: {mark(total < limit)} "
                f"({total:.0f} s, {how})"
            )
    peak = max(c["peak_mb"] for c in cases)
    lines.append(
        f"- peak memory under {TARGETS['memory_mb']:.0f} MB: "
        f"{mark(peak < TARGETS['memory_mb'])} ({peak:.0f} MB at most)"
    )
    for c in cases:
        ratio = c["seconds"] / c["floor_seconds"]
        lines.append(
            f"- K = {c['K']}: at most {FLOOR_RATIO:.0f} x the floor: "
            f"{mark(ratio <= FLOOR_RATIO)} ({ratio:.1f} x)"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python benchmarks/bench_adapters.py [options]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="20,50,100", help="K values")
    parser.add_argument("--full", default="20", help="K values run on all 224 modules")
    parser.add_argument("--sample-layers", type=int, default=2)
    parser.add_argument(
        "--rank",
        type=int,
        default=None,
        help="--rank of clair adapters (default: its own, the LoRA rank)",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--workdir", default=None, help="where the adapters are written (temporary)"
    )
    parser.add_argument(
        "--out",
        default=str(Path(__file__).parent / "results" / "adapters.md"),
        help="the report",
    )
    parser.add_argument("--floor-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_child:
        floor_child(args.floor_child[1:], int(args.floor_child[0]))
        return
    when = datetime.datetime.now().isoformat(timespec="seconds")
    full = {int(k) for k in args.full.split(",") if k}
    cases, rows = [], []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for k in (int(x) for x in args.clients.split(",")):
            layers = LAYERS if k in full else args.sample_layers
            print(f"K = {k}, {layers} layers ...", file=sys.stderr, flush=True)
            case = run_case(Path(tmp), k, layers, args.jobs, args.rank)
            case["extrapolated"] = case["proportional"] = case["seconds"]
            if layers < LAYERS:
                print(f"K = {k}, 1 layer ...", file=sys.stderr, flush=True)
                one = run_case(Path(tmp), k, 1, args.jobs, args.rank)
                shutil.rmtree(Path(tmp) / f"in-{k}-1")
                case.update(extrapolate(one["seconds"], case["seconds"], layers))
            cases.append(case)
            print(
                json.dumps({x: y for x, y in case.items() if x != "folders"}),
                file=sys.stderr,
                flush=True,
            )
            names = [
                f"model.layers.0.{kind}"
                for kind in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj")
            ]
            for r in per_module([Path(f) for f in case["folders"]], names, args.rank):
                rows.append({"K": k, **r})
            shutil.rmtree(Path(tmp) / f"in-{k}-{layers}")
    text = report(cases, rows, args, when)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(text)
    os.replace(partial, out)
    print(text)


if __name__ == "__main__":
    main()
