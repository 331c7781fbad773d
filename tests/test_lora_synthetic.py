"""Synthetic LoRA federations (lora.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from clair_stats.lora.peft import read_adapters
from clair_stats.lora.synthetic import MODULES, synthetic_federation


def test_benign_updates_share_a_subspace_and_contaminated_ones_leave_it():
    """Benign B_km = U_m G_km + nu E_km: the energy off the top-R subspace of the
    benign stack is the noise only, so its share of ||Theta||_F^2 is small
    (noise 0.001 here: at most 1e-4 of the energy); a contaminated update has
    most of its energy off that subspace ((out - R) / out of an isotropic B on
    average: 5/6 for out = 24; more than half in any draw with this seed)."""
    q_proj = "model.layers.0.self_attn.q_proj"
    fed = synthetic_federation(
        10, contaminated={3: [q_proj]}, noise=1e-3, seed=4, rank=4
    )
    assert fed.contaminated.shape == (10, 3)
    assert fed.contaminated.sum() == 1
    assert fed.contaminated[3, fed.modules.index(q_proj)]
    np.testing.assert_array_equal(fed.benign, np.arange(10) != 3)
    dense = fed.updates(q_proj).dense()
    benign = dense[fed.benign]
    stacked = np.concatenate(list(benign), axis=1)
    u = np.linalg.svd(stacked)[0][:, :4]
    off = dense - np.einsum("pr,rs,ksq->kpq", u, u.T, dense)
    share = np.sum(off**2, axis=(1, 2)) / np.sum(dense**2, axis=(1, 2))
    assert share[fed.benign].max() < 1e-4
    assert share[3] > 0.5
    assert fed.updates(q_proj).scaling[0] == pytest.approx(8.0 / 4)


def test_written_folders_read_back_as_the_same_updates(tmp_path):
    """PEFT folders (float32) read back with the modules, ranks and scaling, and
    the products equal the in-memory updates to float32 rounding (relative
    1e-6: two rounded factors, inner size 4)."""
    fed = synthetic_federation(4, seed=2)
    adapters = read_adapters(fed.write(tmp_path))
    assert set(adapters.module_names) == set(MODULES)
    for m in MODULES:
        expected = fed.updates(m).dense()
        np.testing.assert_allclose(
            adapters.dense(m), expected, rtol=0, atol=1e-6 * np.abs(expected).max()
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contaminated": {9: ["model.layers.0.mlp.down_proj"]}}, "not in 0..7"),
        ({"contaminated": {1: ["nope"]}}, "not one of"),
        ({"modules": {"m": (4, 8)}}, "must exceed the rank"),
        ({"modules": {}}, "empty"),
        ({"strength": 0.0}, "strength"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_federation(8, **kwargs)
