"""PEFT LoRA adapters in and out (clair_stats.lora.peft).

The adapters are made here: numpy + safetensors folders written by the test, and,
when peft and transformers are installed, tiny randomly initialised GPT-2 and
Llama models built from a config (no download), wrapped with peft.get_peft_model.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from clair_stats.core.lowrank import LowRankUpdates
from clair_stats.lora.peft import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    read_adapter,
    read_adapters,
    write_adapter,
)

PREFIX = "base_model.model."
# module path -> (out, in)
SHAPES = {
    "model.layers.0.self_attn.q_proj": (12, 8),
    "model.layers.0.self_attn.v_proj": (12, 8),
    "model.layers.1.self_attn.v_proj": (10, 6),
}


def _config(**overrides) -> dict:
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny-base",
        "revision": None,
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
    }
    config.update(overrides)
    return config


def _factors(rng, shapes=SHAPES, ranks=None, r=4) -> dict:
    """{module: (B (out, r_m), A (r_m, in))} in float32."""
    ranks = ranks or {}
    out = {}
    for name, (o, i) in shapes.items():
        rm = ranks.get(name, r)
        out[name] = (
            rng.standard_normal((o, rm)).astype(np.float32),
            rng.standard_normal((rm, i)).astype(np.float32),
        )
    return out


def _save(folder, factors: dict, config: dict, extra: dict | None = None):
    """Write an adapter folder the way PEFT lays it out."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (b, a) in factors.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b
    tensors.update(extra or {})
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


# -- reading: scaling, patterns, orientation --------------------------------------


@pytest.mark.parametrize("rslora", [False, True])
def test_scaling_is_alpha_over_r_or_over_sqrt_r(tmp_path, rslora):
    """Delta W = s B A with s = alpha / r, or alpha / sqrt(r) under rsLoRA."""
    rng = np.random.default_rng(0)
    factors = _factors(rng)
    adapter = read_adapter(_save(tmp_path / "a", factors, _config(use_rslora=rslora)))
    scaling = 8 / math.sqrt(4) if rslora else 8 / 4
    assert adapter.module_names == tuple(sorted(SHAPES))
    for name, (b, a) in factors.items():
        spec = adapter.modules[name]
        assert spec.shape == SHAPES[name]
        assert spec.scaling == scaling
        module = adapter.module(name)
        np.testing.assert_array_equal(module.lora_B, b.astype(np.float64))
        np.testing.assert_allclose(
            module.delta(), scaling * (b.astype(float) @ a.astype(float)), rtol=1e-12
        )


def test_rank_and_alpha_patterns_follow_peft_matching(tmp_path):
    """rank_pattern / alpha_pattern keys match a '.'-bounded suffix of the module
    path (regex `(.*\\.)?(key)$`), the first matching key wins, and modules that
    no key matches take r / lora_alpha."""
    rng = np.random.default_rng(1)
    ranks = {
        "model.layers.0.self_attn.v_proj": 2,  # matched by the suffix key
        "model.layers.1.self_attn.v_proj": 6,  # matched by the earlier, full key
    }
    config = _config(
        rank_pattern={"model.layers.1.self_attn.v_proj": 6, "v_proj": 2},
        alpha_pattern={r"layers\.1\..*v_proj": 3, "v_proj": 5},
    )
    adapter = read_adapter(_save(tmp_path / "a", _factors(rng, ranks=ranks), config))
    got = {n: (s.rank, s.alpha, s.scaling) for n, s in adapter.modules.items()}
    assert got == {
        "model.layers.0.self_attn.q_proj": (4, 8.0, 8 / 4),
        "model.layers.0.self_attn.v_proj": (2, 5.0, 5 / 2),
        "model.layers.1.self_attn.v_proj": (6, 3.0, 3 / 6),
    }
    # "proj" alone is not a '.'-bounded suffix of any path: it matches no module
    loose = read_adapter(
        _save(tmp_path / "b", _factors(rng), _config(rank_pattern={"proj": 2}))
    )
    assert {s.rank for s in loose.modules.values()} == {4}
    wrong = _config(rank_pattern={"q_proj": 2})
    with pytest.raises(ValueError, match=r"q_proj.*rank 4 but the config gives r = 2"):
        read_adapter(_save(tmp_path / "c", _factors(rng), wrong))


def test_fan_in_fan_out_transposes_only_the_stored_delta(tmp_path):
    """GPT-2's Conv1D stores W as (in, out): the factors keep their (r, in) and
    (out, r) shapes, Theta = s B A is (out, in), the stored weight gets its
    transpose."""
    rng = np.random.default_rng(2)
    factors = _factors(rng)
    adapter = read_adapter(_save(tmp_path / "a", factors, _config(fan_in_fan_out=True)))
    name = "model.layers.1.self_attn.v_proj"
    b, a = (x.astype(float) for x in factors[name])
    assert adapter.modules[name].shape == SHAPES[name]
    np.testing.assert_allclose(adapter.module(name).delta(), 2 * b @ a, rtol=1e-12)
    np.testing.assert_allclose(adapter.stored_delta(name), (2 * b @ a).T, rtol=1e-12)


def test_adapter_set_gives_low_rank_updates_per_module(tmp_path):
    """AdapterSet.updates(m): B_k = lora_B, A_k = lora_A, s_k per client; ranks and
    alphas may differ between clients."""
    rng = np.random.default_rng(3)
    folders, expected = [], []
    for k, (r, alpha) in enumerate([(4, 8), (2, 2), (4, 16)]):
        factors = _factors(rng, r=r)
        config = _config(r=r, lora_alpha=alpha)
        folders.append(_save(tmp_path / f"c{k}", factors, config))
        b, a = factors["model.layers.0.self_attn.q_proj"]
        expected.append(alpha / r * (b.astype(float) @ a.astype(float)))
    adapters = read_adapters(folders)
    updates = adapters.updates("model.layers.0.self_attn.q_proj")
    assert isinstance(updates, LowRankUpdates)
    assert updates.ranks == (4, 2, 4)
    np.testing.assert_allclose(updates.scaling, [2.0, 1.0, 4.0])
    np.testing.assert_allclose(updates.dense(), np.stack(expected), rtol=1e-12)
    np.testing.assert_allclose(
        adapters.dense("model.layers.0.self_attn.q_proj"), np.stack(expected)
    )
    assert adapters.names == ("c0", "c1", "c2")


# -- reading: what is refused ------------------------------------------------------


def test_mismatched_adapters_name_every_difference(tmp_path):
    """Base model, modules and shapes must agree; the error lists per adapter what
    differs from adapter 0."""
    rng = np.random.default_rng(4)
    ref = _save(tmp_path / "ref", _factors(rng), _config())
    other_base = _save(
        tmp_path / "base", _factors(rng), _config(base_model_name_or_path="other")
    )
    fewer = dict(SHAPES)
    del fewer["model.layers.1.self_attn.v_proj"]
    fewer["model.layers.0.mlp.up_proj"] = (12, 8)
    modules = _save(tmp_path / "mods", _factors(rng, shapes=fewer), _config())
    wider = dict(SHAPES, **{"model.layers.0.self_attn.q_proj": (12, 9)})
    shapes = _save(tmp_path / "shape", _factors(rng, shapes=wider), _config())
    with pytest.raises(ValueError, match="do not match adapter 0") as info:
        read_adapters([ref, other_base, modules, shapes])
    lines = {
        line.split(" (")[0].strip("- "): line
        for line in str(info.value).splitlines()
        if line.strip().startswith("- adapter")
    }
    assert sorted(lines) == ["adapter 1", "adapter 2", "adapter 3"]
    assert (
        "base_model_name_or_path 'other' (adapter 0: 'tiny-base')" in lines["adapter 1"]
    )
    assert "missing modules ['model.layers.1.self_attn.v_proj']" in lines["adapter 2"]
    assert "extra modules ['model.layers.0.mlp.up_proj']" in lines["adapter 2"]
    assert "(out, in) = (12, 9) (adapter 0: (12, 8))" in lines["adapter 3"]
    with pytest.raises(ValueError, match="at least two"):
        read_adapters([ref])
    with pytest.raises(ValueError, match="more than once"):
        read_adapters([ref, ref])


@pytest.mark.parametrize("filename", ["adapter_model.bin", "adapter_model.pt"])
def test_pickle_adapters_are_refused_with_the_conversion(tmp_path, filename):
    """A .bin/.pt adapter is never unpickled; the message says how to convert."""
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / filename).write_bytes(b"not read")
    (folder / CONFIG_NAME).write_text(json.dumps(_config()))
    with pytest.raises(ValueError, match="safetensors only") as info:
        read_adapter(folder)
    assert filename in str(info.value)
    assert "save_pretrained(new_folder, safe_serialization=True)" in str(info.value)


def test_missing_files_and_bad_json(tmp_path):
    """Missing folder / weights / config and invalid JSON give clear errors."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_adapter(tmp_path / "nowhere")
    folder = _save(tmp_path / "a", _factors(np.random.default_rng(5)), _config())
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_adapter(folder)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        read_adapter(folder)
    with pytest.raises(ValueError, match="is a file"):
        read_adapter(folder / WEIGHTS_NAME)


def test_nan_factors_are_refused_when_read(tmp_path):
    """A NaN in a factor is an error naming the adapter and the tensor."""
    rng = np.random.default_rng(6)
    factors = _factors(rng)
    factors["model.layers.0.self_attn.v_proj"][1][0, 0] = np.nan
    folder = _save(tmp_path / "a", factors, _config())
    adapter = read_adapter(folder)
    adapter.module("model.layers.0.self_attn.q_proj")  # the other modules read
    with pytest.raises(ValueError, match=r"v_proj\.lora_A\.weight holds 1 NaN"):
        adapter.module("model.layers.0.self_attn.v_proj")
    clean = _save(tmp_path / "b", _factors(rng), _config())
    with pytest.raises(ValueError, match="NaN"):
        read_adapters([clean, folder]).updates("model.layers.0.self_attn.v_proj")


@pytest.mark.parametrize(
    ("config", "extra", "message"),
    [
        ({"peft_type": "IA3"}, {}, "only LoRA adapters"),
        ({"use_dora": True}, {}, "DoRA"),
        (
            {},
            {f"{PREFIX}model.layers.0.self_attn.q_proj.lora_magnitude_vector": 12},
            "DoRA magnitude vectors",
        ),
        (
            {},
            {
                f"{PREFIX}model.embed_tokens.lora_embedding_A": (4, 50),
                f"{PREFIX}model.embed_tokens.lora_embedding_B": (16, 4),
            },
            "embedding layers",
        ),
        ({"lora_bias": True}, {}, "lora_bias is true"),
        ({"bias": "all"}, {}, "trains biases"),
        (
            {"modules_to_save": ["lm_head"]},
            {f"{PREFIX}lm_head.modules_to_save.weight": (50, 16)},
            "modules_to_save",
        ),
        ({"init_lora_weights": "pissa_niter_4"}, {}, "path_initial_model"),
        ({"r": 0}, {}, "r must be a positive integer"),
        ({"rank_pattern": {"q_proj[": 2}}, {}, "is not a regex"),
    ],
)
def test_unsupported_adapters_are_refused(tmp_path, config, extra, message):
    """What clair_stats cannot model is refused with a message saying what."""
    rng = np.random.default_rng(7)
    tensors = {
        key: rng.standard_normal(
            shape if isinstance(shape, tuple) else (shape,)
        ).astype(np.float32)
        for key, shape in extra.items()
    }
    folder = _save(tmp_path / "a", _factors(rng), _config(**config), tensors)
    with pytest.raises(ValueError, match=message):
        read_adapter(folder)


def test_convolution_and_inconsistent_factors_are_refused(tmp_path):
    """4-D (convolution) factors and lora_A / lora_B of different ranks."""
    rng = np.random.default_rng(8)
    conv = {
        "model.conv": (
            rng.standard_normal((8, 4, 3, 3)),
            rng.standard_normal((4, 3, 1, 1)),
        )
    }
    conv = {k: tuple(x.astype(np.float32) for x in v) for k, v in conv.items()}
    with pytest.raises(ValueError, match="convolution layers"):
        read_adapter(_save(tmp_path / "conv", conv, _config()))
    bad = {
        "model.q": (
            rng.standard_normal((8, 4)).astype(np.float32),
            rng.standard_normal((3, 6)).astype(np.float32),
        )
    }
    with pytest.raises(ValueError, match="their ranks differ"):
        read_adapter(_save(tmp_path / "ranks", bad, _config()))


def test_bfloat16_is_read_through_torch_or_refused_without_it(tmp_path, monkeypatch):
    """bf16 factors are read exactly (bf16 -> float32 is exact) through torch; with
    torch missing the error says how to convert."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    gen = torch.Generator().manual_seed(0)
    b = torch.randn(12, 4, generator=gen).to(torch.bfloat16)
    a = torch.randn(4, 8, generator=gen).to(torch.bfloat16)
    folder = tmp_path / "bf16"
    folder.mkdir()
    name = "model.layers.0.self_attn.q_proj"
    save_torch(
        {f"{PREFIX}{name}.lora_A.weight": a, f"{PREFIX}{name}.lora_B.weight": b},
        str(folder / WEIGHTS_NAME),
    )
    (folder / CONFIG_NAME).write_text(json.dumps(_config()))
    adapter = read_adapter(folder)
    assert adapter.modules[name].dtype == "BF16"
    module = adapter.module(name)
    np.testing.assert_array_equal(module.lora_B, b.float().numpy().astype(float))
    np.testing.assert_array_equal(module.lora_A, a.float().numpy().astype(float))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(ValueError, match="bfloat16.*re-save the adapter in float32"):
        adapter.module(name)


# -- writing -----------------------------------------------------------------------


def test_write_round_trip_sets_scaling_one_per_module(tmp_path):
    """write_adapter stores B, A with rank_pattern = alpha_pattern = r_m per module
    and use_rslora false, so that reading back gives Delta W = B A exactly (up to
    float32 rounding of the factors)."""
    rng = np.random.default_rng(9)
    template = read_adapter(
        _save(tmp_path / "t", _factors(rng), _config(use_rslora=True, r=4))
    )
    ranks = {"model.layers.0.self_attn.q_proj": 1, "model.layers.1.self_attn.v_proj": 7}
    new = {
        n: (b.astype(float), a.astype(float))
        for n, (b, a) in _factors(rng, ranks=ranks).items()
    }
    folder = write_adapter(tmp_path / "out", new, template)
    back = read_adapter(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["use_rslora"] is False
    assert config["base_model_name_or_path"] == "tiny-base"
    assert config["target_modules"] == sorted(new)
    for name, (b, a) in new.items():
        spec = back.modules[name]
        assert spec.scaling == 1.0
        assert spec.rank == ranks.get(name, 4)
        # float32 storage: each factor entry has relative error <= 2^-24, so an
        # entry of B A errs by at most 2 * 2^-24 * sum_i |B_ji| |A_il|
        bound = 2 * 2.0**-24 * (np.abs(b) @ np.abs(a)) * 1.01
        assert np.all(np.abs(back.module(name).delta() - b @ a) <= bound)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_adapter(folder, new, template)
    write_adapter(folder, new, template, overwrite=True, dtype="float64")
    name = "model.layers.0.self_attn.v_proj"
    np.testing.assert_array_equal(
        read_adapter(folder).module(name).delta(), new[name][0] @ new[name][1]
    )


def test_write_refuses_bad_factors(tmp_path):
    """Swapped factors, unknown modules, NaN and bfloat16 are errors."""
    rng = np.random.default_rng(10)
    template = read_adapter(_save(tmp_path / "t", _factors(rng), _config()))
    name = "model.layers.0.self_attn.q_proj"
    b, a = _factors(rng)[name]
    with pytest.raises(ValueError, match="Did you swap B and A"):
        write_adapter(tmp_path / "o1", {name: (a.T, b.T)}, template)
    with pytest.raises(ValueError, match="not a module of the template"):
        write_adapter(tmp_path / "o2", {"model.other": (b, a)}, template)
    bad = b.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        write_adapter(tmp_path / "o3", {name: (bad, a)}, template)
    with pytest.raises(ValueError, match="cannot write bfloat16"):
        write_adapter(tmp_path / "o4", {name: (b, a)}, template, dtype="bfloat16")
    with pytest.raises(ValueError, match="overflow float16"):
        write_adapter(tmp_path / "o5", {name: (b * 1e6, a)}, template, dtype="float16")


# -- round trips through PEFT itself -------------------------------------------------


def _tiny_model(kind: str):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    if kind == "gpt2":  # Conv1D layers: fan_in_fan_out
        config = transformers.GPT2Config(
            n_embd=16,
            n_layer=2,
            n_head=2,
            vocab_size=50,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
        return transformers.GPT2LMHeadModel(config)
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=50,
    )
    return transformers.LlamaForCausalLM(config)


PEFT_CASES = {
    "gpt2": {
        "target_modules": ["c_attn", "c_fc"],
        "fan_in_fan_out": True,
        "r": 4,
        "lora_alpha": 8,
        "rank_pattern": {"h.1.attn.c_attn": 2},
        "alpha_pattern": {"c_fc": 3},
    },
    "llama": {
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "r": 4,
        "lora_alpha": 6,
        "use_rslora": True,
        "rank_pattern": {"layers.0.mlp.down_proj": 3},
    },
}


def _weights(model) -> dict:
    """Base-layer weights by module path (PEFT's `.base_layer` removed)."""
    out = {}
    for name, param in model.named_parameters():
        if name.endswith(".weight") and "lora_" not in name:
            path = name[: -len(".weight")].replace(".base_layer", "")
            out[path.removeprefix("base_model.model.")] = (
                param.detach().double().numpy()
            )
    return out


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' deprecations
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_peft_adapter_reads_as_peft_merges_it_and_written_adapter_loads(tmp_path, kind):
    """Read a PEFT-saved adapter: s B A (transposed for Conv1D) equals PEFT's own
    merged weight minus the base weight. Then write new factors of other ranks
    and load them with PeftModel.from_pretrained: its merge adds exactly B A."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from peft import LoraConfig, PeftModel, get_peft_model

    base = _tiny_model(kind)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    before = _weights(base)
    model = get_peft_model(base, LoraConfig(**PEFT_CASES[kind]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    model.save_pretrained(tmp_path / "adapter")
    adapter = read_adapter(tmp_path / "adapter")
    merged = _weights(model.merge_and_unload())
    assert adapter.fan_in_fan_out == (kind == "gpt2")
    n_layers = 2
    assert len(adapter.modules) == n_layers * len(PEFT_CASES[kind]["target_modules"])
    for name in adapter.module_names:
        # float32 merge: PEFT's sum differs from ours in float64 by a few ulps of
        # the largest entries, ~1e-7 relative
        np.testing.assert_allclose(
            adapter.stored_delta(name),
            merged[name] - before[name],
            atol=1e-6 * np.abs(merged[name]).max(),
        )
    ranks = {s.name: s.rank for s in adapter.modules.values()}
    assert sorted(set(ranks.values())) == ([2, 4] if kind == "gpt2" else [3, 4])

    rng = np.random.default_rng(2)
    new = {}
    for i, (name, spec) in enumerate(adapter.modules.items()):
        r = 1 + i % 3  # ranks 1, 2, 3: none equal to the config's r
        new[name] = (
            rng.standard_normal((spec.out_features, r)),
            rng.standard_normal((r, spec.in_features)),
        )
    folder = write_adapter(tmp_path / "refined", new, adapter)
    fresh = _tiny_model(kind)
    fresh.load_state_dict(base_state)
    loaded = PeftModel.from_pretrained(fresh, str(folder))
    merged = _weights(loaded.merge_and_unload())
    for name, (b, a) in new.items():
        delta = b @ a
        expected = delta.T if kind == "gpt2" else delta
        np.testing.assert_allclose(
            merged[name] - before[name],
            expected,
            atol=1e-5 * np.abs(expected).max(),
        )
