"""RandIntensityRemap(d): monotone, endpoints and background kept, reproducible, per-key curves."""

from __future__ import annotations

import torch

from monai_lkcfusion.transforms.augment import RandIntensityRemap, RandIntensityRemapd


def test_curves_are_monotone_and_keep_zero_and_one() -> None:
    ramp = torch.linspace(0, 1, 1001)
    remap = RandIntensityRemap(prob=1.0, gamma_prob=0.5).set_random_state(3)
    kinds = set()
    for _ in range(40):
        out = remap(ramp)
        kinds.add("gamma" if remap._gamma is not None else "knots")
        assert out.shape == ramp.shape and out.dtype == ramp.dtype
        assert float(out[0]) == 0.0 and abs(float(out[-1]) - 1.0) < 1e-6
        assert bool((out[1:] >= out[:-1] - 1e-7).all())  # monotone
        assert float((out - ramp).abs().max()) > 1e-3  # something changed
    assert kinds == {"gamma", "knots"}


def test_prob_zero_is_identity_and_seed_reproduces() -> None:
    img = torch.rand(1, 32, 32)
    assert torch.equal(RandIntensityRemap(prob=0.0)(img), img)
    a = RandIntensityRemap(prob=1.0).set_random_state(7)(img)
    b = RandIntensityRemap(prob=1.0).set_random_state(7)(img)
    assert torch.equal(a, b)


def test_dict_wrapper_remaps_only_its_keys() -> None:
    data = {"mri": torch.rand(1, 16, 16), "other": torch.rand(1, 16, 16)}
    data["other"][:, :4] = 0.0  # background
    out = RandIntensityRemapd("other", prob=1.0).set_random_state(0)(data)
    assert torch.equal(out["mri"], data["mri"])
    assert not torch.equal(out["other"], data["other"])
    assert bool((out["other"][:, :4] == 0).all())
