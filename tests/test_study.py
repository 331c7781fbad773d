"""The study runner: seeds, storage, resuming, parallel backends, interruption."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from clair_stats.experiments.study import (
    ResultStore,
    StoreError,
    Study,
    derive_seed,
    grid,
    load_or_run,
    run_study,
    study_main,
    study_parser,
)

CALLS: list[tuple[dict, int]] = []


def draw(config: dict, seed: int) -> list[dict]:
    """A replicate: two rows, a normal draw shifted by the config's a."""
    CALLS.append((dict(config), seed))
    rng = np.random.default_rng(seed)
    return [
        {"method": m, "x": float(rng.normal() + config["a"]), "v": np.arange(2)}
        for m in ("u", "v")
    ]


def small_study(replicates: int = 2, a=(1, 2, 3), version: str = "1") -> Study:
    return Study("small", draw, grid(a=list(a), b=["x", "y"]), replicates, version)


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()


# ---------------------------------------------------------------- seeds, grids


def test_grid_is_the_cartesian_product_last_axis_fastest():
    g = grid(p=[30, 80], K=[10, 20, 40])
    assert len(g) == 6
    assert g[0] == {"p": 30, "K": 10}
    assert g[1] == {"p": 30, "K": 20}
    assert g[-1] == {"p": 80, "K": 40}


def test_grid_rejects_an_empty_axis():
    with pytest.raises(ValueError, match="axis 'K' is empty"):
        grid(p=[1], K=[])


def test_seed_is_a_function_of_study_config_and_replicate_only():
    config = {"p": 30, "K": 10, "type": "random"}
    seed = derive_seed("s", config, 3)
    assert seed == derive_seed("s", dict(reversed(list(config.items()))), 3)
    assert 0 <= seed < 2**63
    others = {
        derive_seed("t", config, 3),
        derive_seed("s", config, 4),
        derive_seed("s", {**config, "K": 11}, 3),
        derive_seed("s", {**config, "K": 10.0}, 3),  # a type change is a new key
    }
    assert seed not in others
    assert len(others) == 4


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"a": [1, 2]}, TypeError, "JSON scalar"),
        ({"a": float("nan")}, ValueError, "not finite"),
        ({"seed": 1}, ValueError, "reserved"),
        ({1: 2}, TypeError, "keys must be strings"),
    ],
)
def test_bad_configurations_are_refused(config, error, match):
    with pytest.raises(error, match=match):
        derive_seed("s", config, 0)


def test_numpy_scalars_in_a_configuration_are_plain_values():
    assert derive_seed("s", {"a": np.int64(3)}, 0) == derive_seed("s", {"a": 3}, 0)


def test_study_validates_its_arguments():
    with pytest.raises(ValueError, match="replicates must be >= 1"):
        Study("s", draw, [{"a": 1}], 0)
    with pytest.raises(ValueError, match="duplicates"):
        Study("s", draw, [{"a": 1}, {"a": 1}], 1)
    with pytest.raises(ValueError, match="names a folder"):
        Study("a/b", draw, [{"a": 1}], 1)
    with pytest.raises(ValueError, match="at least one configuration"):
        Study("s", draw, [], 1)


def test_tasks_are_replicate_major():
    tasks = small_study(replicates=2).tasks()
    assert [rep for _, rep, _ in tasks] == [0] * 6 + [1] * 6
    assert len({seed for _, _, seed in tasks}) == 12


# ---------------------------------------------------------------- storage


def test_results_are_stored_one_row_per_replicate_and_read_back(tmp_path):
    study = small_study()
    with run_study(study, tmp_path / "r.sqlite", progress=False) as store:
        assert len(store) == 12
        frame = store.frame(study)
    assert len(frame) == 24  # two rows per replicate
    assert set(frame.columns) >= {"a", "b", "replicate", "seed", "item", "x", "v"}
    row = frame.iloc[0]
    expected = np.random.default_rng(int(row["seed"])).normal() + row["a"]
    assert row["x"] == expected  # JSON keeps a float64 exactly
    assert row["v"] == [0, 1]


def test_rerun_skips_what_is_stored_and_a_larger_grid_reuses_rows(tmp_path):
    path = tmp_path / "r.sqlite"
    run_study(small_study(replicates=1), path, progress=False).close()
    assert len(CALLS) == 6
    CALLS.clear()
    run_study(small_study(replicates=1), path, progress=False).close()
    assert CALLS == []
    bigger = small_study(replicates=2, a=(1, 2, 3, 4))
    with run_study(bigger, path, progress=False) as store:
        assert len(store) == 16
        assert len(CALLS) == 16 - 6
        assert len(store.frame(small_study(replicates=1))) == 12


def test_frame_keeps_only_the_grid_asked_for(tmp_path):
    path = tmp_path / "r.sqlite"
    run_study(small_study(replicates=2), path, progress=False).close()
    with ResultStore(path, "small") as store:
        assert len(store.frame()) == 24
        assert len(store.frame(small_study(replicates=1, a=(1,)))) == 4


def test_store_refuses_another_study_or_version(tmp_path):
    path = tmp_path / "r.sqlite"
    run_study(small_study(), path, progress=False).close()
    with pytest.raises(ValueError, match="study 'small', not 'other'"):
        ResultStore(path, "other")
    with pytest.raises(ValueError, match="fresh=True"):
        run_study(small_study(version="2"), path, progress=False)
    with run_study(small_study(version="2"), path, progress=False, fresh=True) as st:
        assert len(st) == 12


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (3.0, "mapping or a list of mappings"),
        ([{"x": 1}, 2], "every item must be a mapping"),
        ({"a": 1}, "clash"),
        ({"seed": 1}, "clash"),
        ({"x": object()}, "JSON values"),
    ],
)
def test_bad_results_are_refused_with_the_config_named(tmp_path, result, match):
    study = Study("bad", _constant(result), [{"a": 1}], 1)
    with pytest.raises((TypeError, ValueError), match=match):
        run_study(study, tmp_path / "r.sqlite", progress=False)


class _constant:
    def __init__(self, value):
        self.value = value

    def __call__(self, config, seed):
        return self.value


# ---------------------------------------------------------------- backends


def _values(store: ResultStore, study: Study) -> list[tuple]:
    frame = store.frame(study)
    return sorted(
        zip(frame["a"], frame["b"], frame["replicate"], frame["x"], strict=True)
    )


def test_joblib_and_sequential_give_the_same_results(tmp_path):
    study = small_study()
    with run_study(study, tmp_path / "1.sqlite", progress=False) as one:
        expected = _values(one, study)
    with run_study(study, tmp_path / "2.sqlite", n_jobs=2, progress=False) as two:
        assert _values(two, study) == expected


def test_dask_local_cluster_gives_the_same_results(tmp_path):
    pytest.importorskip("dask.distributed")
    study = small_study(replicates=1)
    with run_study(study, tmp_path / "1.sqlite", progress=False) as one:
        expected = _values(one, study)
    with run_study(
        study, tmp_path / "d.sqlite", dask="local", n_jobs=2, progress=False
    ) as d:
        assert _values(d, study) == expected


# ---------------------------------------------------------------- interruption

SLOW_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from clair_stats.experiments.study import Study, grid, run_study

    LOG = sys.argv[2]

    def slow(config, seed):
        with open(LOG, "a") as f:
            f.write(f"{config['i']}\\n")
        time.sleep(0.06)
        return {"x": config["i"] * 2, "pid": os.getpid()}

    if __name__ == "__main__":
        study = Study("slow", slow, grid(i=list(range(40))), 1)
        run_study(study, sys.argv[1], n_jobs=int(sys.argv[3]), progress=False)
    """
)


def _stored(path: Path) -> int:
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_killed_run_loses_at_most_the_replicates_in_flight(tmp_path, n_jobs):
    """SIGKILL the whole process group mid-run: every replicate that finished is
    in the store, intact; at most n_jobs started replicates are lost; a rerun
    computes exactly the missing ones."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SCRIPT)
    db, log = tmp_path / "slow.sqlite", tmp_path / "started.log"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(log), str(n_jobs)],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _stored(db) < 5 and time.monotonic() < deadline:
            assert proc.poll() is None, "the study ended before it could be killed"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stored = _stored(db)
    started = len(log.read_text().split())
    assert 5 <= stored < 40
    # Replicates started but not stored were in flight: one when sequential; with
    # joblib at most 2 n_jobs (one replicate per batch, 2 n_jobs dispatched ahead).
    assert started - stored <= (1 if n_jobs == 1 else 2 * n_jobs)

    log.unlink()
    subprocess.run(
        [sys.executable, str(script), str(db), str(log), "1"], env=env, check=True
    )
    recomputed = [int(i) for i in log.read_text().split()]
    assert len(recomputed) == 40 - stored
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT config, result FROM runs").fetchall()
    assert len(rows) == 40
    for key, text in rows:
        assert json.loads(text)[0]["x"] == 2 * json.loads(key)["i"]


def test_keyboard_interrupt_keeps_finished_replicates_and_returns_130(tmp_path):
    calls = []

    def interrupt_at_third(config, seed):
        calls.append(config)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {"x": 1.0}

    study = Study("int", interrupt_at_third, grid(i=list(range(6))), 1)
    parser = study_parser("test")
    code = study_main(
        lambda args: study,
        lambda frame, folder, args: None,
        parser,
        ["--results", str(tmp_path), "--no-progress"],
    )
    assert code == 130
    with ResultStore(tmp_path / "int" / "results.sqlite", "int") as store:
        assert len(store) == 2


# ---------------------------------------------------------------- command line


class FakeScript:
    """A study script module: parser, build, report (as in simulations/)."""

    def __init__(self):
        self.reports = []

    @staticmethod
    def parser():
        return study_parser("fake")

    @staticmethod
    def build(args):
        return small_study(replicates=1 if args.quick else 2)

    def report(self, frame, folder, args):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "table.csv").write_text(frame.to_csv())
        self.reports.append((len(frame), folder, args.quick))


def test_study_main_runs_and_reports_in_the_grid_folder(tmp_path):
    script = FakeScript()
    argv = ["--results", str(tmp_path), "--no-progress"]
    assert study_main(script.build, script.report, script.parser(), argv) == 0
    assert script.reports[-1] == (24, tmp_path / "small", False)
    argv = [*argv, "--quick", "--report-only"]
    assert study_main(script.build, script.report, script.parser(), argv) == 0
    assert script.reports[-1] == (12, tmp_path / "small" / "quick", True)
    assert (tmp_path / "small" / "quick" / "table.csv").exists()


def test_report_only_without_results_is_an_error(tmp_path, capsys):
    script = FakeScript()
    with pytest.raises(SystemExit):
        study_main(
            script.build,
            script.report,
            script.parser(),
            ["--results", str(tmp_path), "--report-only"],
        )
    assert "no stored results" in capsys.readouterr().err


def test_load_or_run_prefers_a_complete_full_grid(tmp_path):
    script = FakeScript()
    frame, folder, args = load_or_run(script, "auto", tmp_path)
    assert args.quick
    assert len(frame) == 12
    assert folder == tmp_path / "small" / "quick"
    with pytest.raises(FileNotFoundError, match="not all stored"):
        load_or_run(script, "full", tmp_path)
    run_study(
        script.build(script.parser().parse_args([])),
        tmp_path / "small" / "results.sqlite",
        progress=False,
    ).close()
    frame, folder, args = load_or_run(script, "auto", tmp_path)
    assert not args.quick
    assert len(frame) == 24
    assert folder == tmp_path / "small"
    with pytest.raises(ValueError, match="mode must be"):
        load_or_run(script, "fast", tmp_path)


# ---------------------------------------------------------------- damaged stores


def _damage(path: Path, how: str) -> None:
    """Make ``path`` a results file that cannot be used, in one of four ways."""
    if how == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(8192))
    elif how == "truncated":
        run_study(small_study(), path, progress=False).close()
        data = path.read_bytes()
        assert len(data) > 8192  # several pages, so half of them are missing
        path.write_bytes(data[: len(data) // 2])
    elif how == "other schema":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE runs (a, b)")
            db.execute("CREATE TABLE meta (k, v)")
        db.close()
    else:  # another program's database
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE photos (name TEXT, data BLOB)")
            db.execute("INSERT INTO photos VALUES ('a', x'00')")
        db.close()


DAMAGES = ["random bytes", "truncated", "other schema", "another program"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_store_is_refused_naming_the_file_and_fresh(tmp_path, how):
    """Not SQLite, truncated, other columns, other tables: one StoreError (a
    ValueError) that names the file and the two ways out, and the file is left
    as it was (another program's database gains no tables)."""
    path = tmp_path / "r.sqlite"
    _damage(path, how)
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        ResultStore(path, "small")
    message = str(info.value)
    assert str(path) in message
    assert "--fresh" in message
    assert "move it away" in message
    assert isinstance(info.value, ValueError)
    assert path.read_bytes() == before
    with pytest.raises(StoreError):
        run_study(small_study(), path, progress=False)


@pytest.mark.parametrize("how", ["random bytes", "truncated"])
def test_study_main_prints_one_line_for_a_damaged_store_and_fresh_recovers(
    tmp_path, capsys, how
):
    script = FakeScript()
    path = tmp_path / "small" / "results.sqlite"
    path.parent.mkdir()
    _damage(path, how)
    argv = ["--results", str(tmp_path), "--no-progress"]
    for extra in ([], ["--report-only"]):
        code = study_main(script.build, script.report, script.parser(), argv + extra)
        assert code == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert str(path) in err
        assert "--fresh" in err
        assert "Traceback" not in err
    assert script.reports == []
    code = study_main(script.build, script.report, script.parser(), [*argv, "--fresh"])
    assert code == 0
    assert script.reports[-1][0] == 24


def test_study_main_names_an_unusable_results_folder(tmp_path, capsys):
    """A results folder that cannot be created (here: it is a file; a read-only
    folder fails the same way for a user without root): one line naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    script = FakeScript()
    argv = ["--results", str(blocker), "--no-progress"]
    assert study_main(script.build, script.report, script.parser(), argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert str(blocker / "small") in err
    assert "--results" in err


# ---------------------------------------------------------------- orphaned workers


def _session(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid`` other than ``sid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == sid:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "signum", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"]
)
def test_no_worker_outlives_a_killed_jobs_2_run(tmp_path, signum):
    """Kill only the parent of a --jobs 2 run (as the OOM killer or `kill` does):
    its joblib workers and loky's trackers end too. Before the fix they lived on
    for loky's idle timeout (measured 330 s), so the 20 s bound below fails."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SCRIPT)
    db, log = tmp_path / "slow.sqlite", tmp_path / "started.log"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(log), "2"],
        env=env,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while _stored(db) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "the study ended before it could be killed"
            time.sleep(0.01)
        workers = _session(proc.pid)
        assert len(workers) >= 2  # the two workers (and loky's resource trackers)
        os.kill(proc.pid, signum)
        proc.wait()
        deadline = time.monotonic() + 20
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session(proc.pid) == []
    finally:
        for pid in [proc.pid, *_session(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
