"""The Flower app of examples/flower_copying, without running it.

Its full runs (4 rounds of 10 clients, about 50 s each) are in its README; here:
the adapter of the copying Transformer travels as PEFT-named arrays that
ClairStrategy reads as 8 LoRA modules, the arrays come back to the same tensors,
and the app builds the strategy its run config names.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("flwr")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower_copying"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    sys.path.insert(0, str(EXAMPLE))
    sys.dont_write_bytecode, saved = True, sys.dont_write_bytecode
    try:
        from flower_copying import server_app, task

        yield task, server_app
    finally:
        sys.dont_write_bytecode = saved
        sys.path.remove(str(EXAMPLE))
        for name in [m for m in sys.modules if m.startswith("flower_copying")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def run_config():
    import tomllib  # Python >= 3.11, as Flower

    text = (EXAMPLE / "pyproject.toml").read_text()
    return tomllib.loads(text)["tool"]["flwr"]["app"]["config"]


def test_the_adapter_travels_as_lora_modules_and_back(app, run_config):
    from clair_stats.flower import ArrayLayout
    from simulations.copying.transformer import ModelConfig, Transformer

    task, _ = app
    model = Transformer(ModelConfig(), torch.Generator().manual_seed(0))
    model.add_adapters(
        int(run_config["lora-rank"]), 4.0, torch.Generator().manual_seed(1)
    )
    state = model.adapter_state()
    for key in state:  # B = 0 at initialisation: make it a trained adapter
        state[key] = torch.randn(
            state[key].shape, generator=torch.Generator().manual_seed(2)
        )
    record = task.to_arrays(state)
    layout = ArrayLayout.of({k: a.numpy() for k, a in record.items()})
    assert len(layout.lora) == 4 * ModelConfig().n_layers
    assert {layout.rank(m) for m in layout.lora} == {int(run_config["lora-rank"])}
    assert layout.matrices == ()
    assert layout.others == ()
    back = task.from_arrays(record)
    assert set(back) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key].numpy(), value.numpy())
    from flwr.app import Array, ArrayRecord

    stray = ArrayRecord({"embed.weight": Array(np.zeros((2, 2)))})
    with pytest.raises(ValueError, match="PEFT naming"):
        task.from_arrays(stray)


def test_the_app_builds_the_strategy_it_names(app, run_config):
    from flwr.serverapp.strategy import FedAvg, FedMedian

    from clair_stats.flower import ClairStrategy

    _, server_app = app
    clair = server_app.make_strategy("clair", 10, dict(run_config))
    assert isinstance(clair, ClairStrategy)
    assert clair.clair_options == {"rank": int(run_config["clair-rank"])}
    assert clair.alpha == float(run_config["clair-alpha"])
    assert clair.min_available_nodes == 10
    default_rank = server_app.make_strategy(
        "clair", 10, {**run_config, "clair-rank": 0}
    )
    assert default_rank.clair_options == {}
    assert isinstance(server_app.make_strategy("fedavg", 10, dict(run_config)), FedAvg)
    assert isinstance(
        server_app.make_strategy("fedmedian", 10, dict(run_config)), FedMedian
    )
    with pytest.raises(ValueError, match="strategy must be one of"):
        server_app.make_strategy("krum", 10, dict(run_config))
