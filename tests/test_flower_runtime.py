"""ClairStrategy inside Flower's runtimes (flwr 1.42), with the app of tests/flower_app.

Each node of the app replies with a synthetic LoRA adapter (``client_app.py``):
for partition k in round t a deterministic draw from (seed, k, t), benign clients
on one 2-dimensional column space per module, the partitions of ``contaminated``
on another one; ``faulty`` makes a chosen partition reply with an error, a wrong
shape or a NaN in a chosen round. The ServerApp (``server_app.py``) asks every
node its partition id (node ids are random), runs the strategy and records each
round (flags, node ids, each node's refined arrays, the global arrays).

- **Simulation runtime** (``flwr.simulation.run_simulation``, Ray backend, 6
  nodes, 2 rounds): the ServerApp runs in a thread of the test process and the
  ClientApps in Ray actors. The test rebuilds every round's updates from the same
  generator and checks the strategy against :func:`clair_stats.clair` called
  directly: with one module the flags and p-values are clair's own and the
  refined products B~ A~ equal ``result.refined``'s to 1e-10; with two modules
  the verdict is Holm over the K x M (client, module) p-values, a client flagged
  iff one of its pairs is rejected (the strategy's documented rule), and a module
  whose own S^ is the combined one has clair's refined products. The faulty
  reply is left out, with a log line naming the node.
- **Deployment runtime**: a SuperLink and three SuperNodes as local processes on
  127.0.0.1 (insecure), ``flwr run <app> <connection> --stream``; the ServerApp
  runs in a process of the SuperLink's, so the test reads the summary file it
  writes. Every process is stopped in a ``finally`` and the ports are checked
  free.

Design of the data (seed 0, noise 0.001, contaminated partitions 1 and 4): over
seeds 0-39 CLAIR (``rank=2``, alpha 0.05) finds exactly the contaminated clients
in every round of both simulation cases for 32 seeds (its empirical-null test on
K = 5 or 6 clients gives the contaminated ones p-values of about 1e-3 to 1e-2,
so that Holm over 10 or 12 (client, module) pairs misses one in some seeds); seed
0 does so for every order of the clients tried (10 random orders).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

APP = Path(__file__).with_name("flower_app")
SEED = 0
CONTAMINATED = (1, 4)
ALPHA = 0.05


# ---------------------------------------------------------------- helpers
@pytest.fixture
def app_modules(monkeypatch):
    """``client_app`` and ``server_app`` imported as Flower imports them (the app
    folder on ``sys.path``); both and the path are removed afterwards."""
    pytest.importorskip("clair_stats.flower.strategy")
    # no __pycache__ in the repository, here nor in Ray's workers
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.syspath_prepend(str(APP))
    for name in ("client_app", "server_app"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    client = importlib.import_module("client_app")
    server = importlib.import_module("server_app")
    yield client, server
    for name in ("client_app", "server_app"):
        sys.modules.pop(name, None)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values of one family (any shape)."""
    flat = np.asarray(p, dtype=float).ravel()
    order = np.argsort(flat, kind="stable")
    m = flat.size
    steps = np.maximum.accumulate((m - np.arange(m)) * flat[order])
    out = np.empty(m)
    out[order] = np.minimum(1.0, steps)
    return out.reshape(np.shape(p))


def expected_round(client, cfg, partitions, server_round):
    """clair() on the round's updates, rebuilt from the generator.

    Returns the adapters, the per-module results, the combined p-values
    (smallest Holm-adjusted p-value over the modules) and the flags.
    """
    from clair_stats import LowRankUpdates, clair

    shapes = client.initial_adapter(int(cfg["num-modules"]), 24, 2)
    modules = client.lora_modules({k: v.shape for k, v in shapes.items()})
    adapters = [
        client.synthetic_adapter(
            SEED,
            k,
            server_round,
            modules,
            contaminated=k in CONTAMINATED,
            noise=float(cfg["noise"]),
        )
        for k in partitions
    ]
    results = {}
    for module in modules:
        updates = LowRankUpdates(
            [a[module + client.SUFFIX_B] for a in adapters],
            [a[module + client.SUFFIX_A] for a in adapters],
        )
        results[module] = clair(updates, rank=2, alpha=ALPHA, side="left")
    p = np.array([r.p_values for r in results.values()])  # (M, K)
    adjusted = holm(p)
    return adapters, results, adjusted.min(axis=0), (adjusted <= ALPHA).any(axis=0)


def product(arrays, module, client):
    return arrays[module + client.SUFFIX_B] @ arrays[module + client.SUFFIX_A]


# ------------------------------------------------------------- simulation
# (run config overrides, {round: {partition: faulty mode}})
CASES = [
    pytest.param(
        {"num-modules": 1, "faulty": "2:error@1,2:shape@2"},
        {1: {2: "error"}, 2: {2: "shape"}},
        id="one-module",
    ),
    pytest.param(
        {"num-modules": 2, "faulty": "3:nan@1"},
        {1: {3: "nan"}, 2: {}},
        id="two-modules",
    ),
]
#: Words of the strategy's reason for each faulty mode.
REASONS = {"error": "error", "shape": "shape", "nan": "non-finite"}


@pytest.fixture
def ray_dir():
    """A short temporary folder for Ray's session (its socket paths must stay under
    107 bytes, which pytest's tmp_path can exceed)."""
    pytest.importorskip("ray")
    path = tempfile.mkdtemp(prefix="clair-ray-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(("overrides", "faulty"), CASES)
def test_simulation_matches_clair_and_leaves_faulty_replies_out(
    app_modules, overrides, faulty, tmp_path, ray_dir, caplog, monkeypatch
):
    """6 nodes, 2 rounds in Flower's simulation runtime (Ray): every round's flags,
    p-values, refined factors, exclusions and global arrays are those of
    clair_stats.clair on the same updates (module docstring); the contaminated
    partitions are flagged, the benign ones are not; each faulty reply is left
    out with a log line naming its node; the summary file agrees."""
    from flwr.simulation import run_simulation

    client, server = app_modules
    # Flower's Ray backend sets PYTHONPATH for its workers in os.environ and
    # leaves it there: restore it after the test.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # a FutureWarning
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))  # telemetry's id
    caplog.set_level(logging.INFO)
    summary_path = tmp_path / "summary.json"
    cfg = client.settings(
        {},
        {
            "strategy": "clair",
            "num-nodes": 6,
            "seed": SEED,
            "contaminated": ",".join(map(str, CONTAMINATED)),
            "summary-path": str(summary_path),
            **overrides,
        },
    )
    got = {}
    start = time.perf_counter()
    run_simulation(
        server_app=server.make_server_app(
            cfg, on_finish=lambda strategy, summary: got.update(strategy=strategy)
        ),
        client_app=client.make_client_app(cfg),
        num_supernodes=6,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": 2,
                "num_gpus": 0,
                "logging_level": "ERROR",
                "log_to_driver": False,
                "_temp_dir": ray_dir,
            },
        },
    )
    seconds = time.perf_counter() - start
    strategy = got["strategy"]
    summary = json.loads(summary_path.read_text())
    with np.load(summary_path.with_suffix(".npz"), allow_pickle=False) as npz:
        stored = {key: npz[key] for key in npz.files}
    partition = {int(n): int(p) for n, p in summary["partitions"]}
    assert sorted(partition.values()) == list(range(6))
    assert [r.server_round for r in strategy.rounds] == [1, 2]
    assert [e["server_round"] for e in summary["rounds"]] == [1, 2]

    history: dict[int, list[float]] = {}
    compared = skipped = 0
    for report, entry in zip(strategy.rounds, summary["rounds"], strict=True):
        t = report.server_round
        nodes = [int(n) for n in report.node_ids]
        parts = [partition[n] for n in nodes]
        bad = faulty[t]
        assert sorted(parts) == sorted(set(range(6)) - set(bad)), f"round {t}"
        assert entry["node_ids"] == nodes
        assert entry["partition_ids"] == parts
        assert entry["flagged"] == report.flagged.tolist()

        # faulty replies: left out, with a log line naming the node
        left = {partition[int(n)]: (int(n), why) for n, why in report.left_out.items()}
        assert sorted(left) == sorted(bad), f"round {t}"
        for k, mode in bad.items():
            node, why = left[k]
            assert REASONS[mode] in why, f"round {t}, partition {k}: {why}"
            lines = [
                r.getMessage()
                for r in caplog.records
                if f"node {node}" in r.getMessage()
                and "left out" in r.getMessage()
                and f"round {t}" in r.getMessage()
            ]
            assert lines, f"no log line for node {node} (partition {k}) in round {t}"

        # the verdict: clair's on the same updates
        adapters, results, p_comb, flagged = expected_round(client, cfg, parts, t)
        np.testing.assert_allclose(report.p_values, p_comb, rtol=1e-10, atol=0)
        np.testing.assert_array_equal(report.flagged, flagged)
        if len(results) == 1:
            (result,) = results.values()
            np.testing.assert_array_equal(report.flagged, ~result.collaborative)
        truth = np.isin(parts, CONTAMINATED)
        np.testing.assert_array_equal(report.flagged, truth, err_msg=f"round {t}")

        # exclusions: flagged now, or Holm over the client's rounds
        for n, p in zip(nodes, p_comb, strict=True):
            history.setdefault(n, []).append(float(p))
        by_history = np.array(
            [min(1.0, len(history[n]) * min(history[n])) <= ALPHA for n in nodes]
        )
        excluded = flagged | by_history
        np.testing.assert_array_equal(report.excluded, excluded)

        # refined arrays: clair's refined factors where the module's S^ is the
        # round's; an excluded client keeps its own arrays
        for j, n in enumerate(nodes):
            mine = {
                key[len(f"round{t}/node{n}/") :]: value
                for key, value in stored.items()
                if key.startswith(f"round{t}/node{n}/")
            }
            assert set(mine) == set(adapters[j]), f"round {t}, node {n}"
            if excluded[j]:
                for key, value in adapters[j].items():
                    np.testing.assert_array_equal(mine[key], value)
                continue
            for module, result in results.items():
                if not np.array_equal(result.collaborative, ~excluded):
                    skipped += 1  # refined by refine_clients at the combined S^
                    continue
                want = result.refined.B[j] @ result.refined.A[j]
                have = product(mine, module, client)
                np.testing.assert_allclose(have, want, rtol=0, atol=1e-10)
                compared += 1

        # the global arrays: rank-2 truncated SVD of the weighted mean update
        weights = np.array([client.num_examples(k) for k in parts], dtype=float)
        weights = np.where(excluded, 0.0, weights)
        for module in results:
            updates = np.array([product(a, module, client) for a in adapters])
            mean = np.tensordot(weights / weights.sum(), updates, axes=1)
            u, s, vt = np.linalg.svd(mean)
            best = (u[:, :2] * s[:2]) @ vt[:2]
            glob = {
                k[len(f"round{t}/global/") :]: v
                for k, v in stored.items()
                if k.startswith(f"round{t}/global/")
            }
            np.testing.assert_allclose(
                product(glob, module, client), best, rtol=0, atol=1e-10
            )
    # one module: S^ is clair's own in every round, so every product is compared
    assert compared > 0
    if int(cfg["num-modules"]) == 1:
        assert skipped == 0
    print(f"simulation: {seconds:.1f} s; {compared} refined products compared")


# ------------------------------------------------------------- deployment
def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def is_listening(port: int) -> bool:
    """Whether a process accepts connections on 127.0.0.1:port (binding would
    also fail for the connections that closed and wait in TIME_WAIT)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_health(port: int, process: subprocess.Popen, timeout: float) -> None:
    """Wait until the SuperLink answers on its HTTP port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/health", timeout=1
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the SuperLink did not answer on port {port} in {timeout} s")


def stop(processes: list[subprocess.Popen], psutil) -> list[str]:
    """Terminate the processes and everything they started (SuperExec, ServerApp
    and ClientApp processes), wait, then kill what is left; returns what had to be
    killed or still runs."""
    tree = []
    for p in processes:
        try:
            parent = psutil.Process(p.pid)
            tree += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    tree = [proc for proc in tree if _alive(proc, psutil)]
    for proc in tree:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=10)
    killed = []
    for proc in alive:
        try:
            killed.append(" ".join(proc.cmdline()[:2]))
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    for p in processes:
        p.wait(timeout=5)
    killed += [f"{proc.pid} still running" for proc in tree if _alive(proc, psutil)]
    return killed


def _alive(proc, psutil) -> bool:
    """Running and not a zombie (an exited process its parent has not reaped)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_deployment_runtime_runs_two_rounds(tmp_path):
    """A SuperLink and 3 SuperNodes on 127.0.0.1 (insecure), ``flwr run`` with
    ClairStrategy for 2 rounds: both rounds finish with the 3 nodes, the reply of
    partition 1 in round 1 (an error) is left out and the streamed log says so,
    and afterwards no process is left and every port is free."""
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("clair_stats.flower.strategy")
    bin_dir = Path(sys.executable).parent
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        if not (bin_dir / tool).exists():
            pytest.skip(f"{tool} is not in {bin_dir}")
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "flwr-home"
    home.mkdir()
    link_port, *node_ports = free_ports(4)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "FLWR_HOME": str(home),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONPATH", None)
    summary_path = tmp_path / "summary.json"
    processes: list[subprocess.Popen] = []
    logs = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("wb")
        logs.append(log)
        process = subprocess.Popen(
            [str(bin_dir / args[0]), *args[1:]],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(process)
        return process

    started = time.perf_counter()
    try:
        link = start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(link_port),
        )
        wait_for_health(link_port, link, timeout=60)
        for k, port in enumerate(node_ports):
            start(
                f"supernode{k}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--node-config",
                f"partition-id={k} num-partitions=3",
            )
        ready = time.perf_counter()
        run = subprocess.run(
            [
                str(bin_dir / "flwr"),
                "run",
                str(app),
                "test",
                "--stream",
                "--run-config",
                f'strategy="clair" num-nodes=3 contaminated="" faulty="1:error@1" '
                f'summary-path="{summary_path}"',
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
        )
        finished = time.perf_counter()
        print(
            f"deployment: start {ready - started:.1f} s, run {finished - ready:.1f} s"
        )
        output = run.stdout + run.stderr
        (tmp_path / "flwr-run.log").write_text(output)
        assert run.returncode == 0, output[-3000:]
        assert summary_path.exists(), output[-3000:]
        summary = json.loads(summary_path.read_text())
        partition = {int(n): int(p) for n, p in summary["partitions"]}
        assert sorted(partition.values()) == [0, 1, 2]
        rounds = summary["rounds"]
        assert [e["server_round"] for e in rounds] == [1, 2]
        by_round = {e["server_round"]: e for e in rounds}
        assert sorted(partition[n] for n in by_round[1]["node_ids"]) == [0, 2]
        assert sorted(partition[n] for n in by_round[2]["node_ids"]) == [0, 1, 2]
        left_out = by_round[1]["left_out"]
        assert [partition[n] for n, _ in left_out] == [1]
        assert "error" in left_out[0][1]
        assert f"reply of node {left_out[0][0]} left out" in output
        assert by_round[2]["left_out"] == []
        assert "[ROUND 2/2]" in output
    finally:
        try:
            killed = stop(processes, psutil)
        finally:
            for log in logs:
                log.close()
    print(f"deployment: stopped after {time.perf_counter() - started:.1f} s")
    assert not killed, f"not stopped by SIGTERM: {killed}"
    busy = [p for p in (link_port, *node_ports) if is_listening(p)]
    assert not busy, f"ports still listening: {busy}"
