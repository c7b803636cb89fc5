"""Measured choices: the on-disk cache, the timing, and how the optimised network uses them."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from monai_lkcfusion import machine
from monai_lkcfusion.networks import LKCFUNet, calibration, optimize_for_inference
from monai_lkcfusion.networks.calibration import ChoiceCache, cache_dir, fastest
from monai_lkcfusion.networks.optimize import LargeKernelConv2d


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LKCFUSION_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LKCFUSION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "monai-lkcfusion"


def test_cache_round_trip_per_machine(tmp_path, monkeypatch):
    cache = ChoiceCache("plans", tmp_path)
    assert cache.get("layer") is None
    cache.put("layer", 48)
    assert ChoiceCache("plans", tmp_path).get("layer") == 48  # a new process reads what this one wrote
    ChoiceCache("plans", tmp_path).put("other", "contiguous")  # a second writer merges, does not replace
    # a long-lived process (the Slicer worker, a server) sees what another one measured after it read the file: both
    # then run the same plans (a measured choice that differs between processes changes the output's rounding)
    assert cache.get("other") == "contiguous"
    ChoiceCache("plans", tmp_path).put("layer", 16)  # another process measured the same key differently
    assert cache.get("third") is None and cache.get("layer") == 48  # a re-read keeps the choice this process runs
    ChoiceCache("plans", tmp_path).put("layer", 48)
    content = json.loads((tmp_path / "plans.json").read_text())
    assert content == {machine.machine_key(): {"layer": 48, "other": "contiguous"}}
    monkeypatch.setattr(calibration, "machine_key", lambda: "another CPU")
    assert ChoiceCache("plans", tmp_path).get("layer") is None  # choices never travel to another kind of machine


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"%s": 5}'])
def test_corrupt_cache_is_ignored(tmp_path, content):
    path = tmp_path / "plans.json"
    path.write_text(content.replace("%s", machine.machine_key()))
    cache = ChoiceCache("plans", tmp_path)
    assert cache.get("layer") is None
    cache.put("layer", 32)
    assert json.loads(path.read_text())[machine.machine_key()] == {"layer": 32}


def test_unwritable_cache_warns_and_keeps_choice_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = ChoiceCache("plans", blocker / "sub")
    with pytest.warns(UserWarning, match="not cached"):
        cache.put("layer", 16)
    assert cache.get("layer") == 16


def test_fastest_picks_the_quickest_candidate():
    calls = {"slow": 0, "quick": 0}

    def run(name: str, seconds: float):
        def call():
            calls[name] += 1
            time.sleep(seconds)

        return call

    assert fastest({"slow": run("slow", 0.03), "quick": run("quick", 0.0)}, repeats=3) == "quick"
    assert calls == {"slow": 2, "quick": 4}  # the far slower one is not timed again


def _count_timings(monkeypatch) -> list[int]:
    """Patch the timing used by optimize.py to count its calls (it still measures)."""
    from monai_lkcfusion.networks import optimize

    counter = [0]

    def counting(candidates, **kwargs):
        counter[0] += 1
        return fastest(candidates, **kwargs)

    monkeypatch.setattr(optimize, "fastest", counting)
    return counter


def test_layer_plan_is_measured_once_per_machine(tmp_path, monkeypatch):
    counter = _count_timings(monkeypatch)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 9, padding=4)
    x = torch.randn(1, 4, 40, 40)
    cache = ChoiceCache("plans", tmp_path)
    first = LargeKernelConv2d(conv, (16, 32), cache=cache)
    with torch.no_grad():
        out = first(x)
        assert torch.allclose(out, conv(x), atol=1e-4)
    assert counter[0] == 1
    key = first.cache_key(x)
    assert "4->4" in key and "40x40" in key and f"{torch.get_num_threads()} threads" in key
    chosen = cache.get(key)
    assert chosen in (0, 16, 32) and first.plans[(1, 40, 40, "cpu", "contiguous")] == chosen
    second = LargeKernelConv2d(conv, (16, 32), cache=ChoiceCache("plans", tmp_path))  # e.g. the next process
    with torch.no_grad():
        second(x)
    assert counter[0] == 1  # taken from the cache, not timed again
    assert second.plans[(1, 40, 40, "cpu", "contiguous")] == chosen


def test_cached_plan_decides(tmp_path):
    """A cached choice is used as it is: here it forces each candidate in turn; the output stays the same."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 7, padding=3, groups=3)
    x = torch.randn(2, 3, 30, 30).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = conv(x)
        for choice in (0, 16, 32):
            cache = ChoiceCache(f"plans{choice}", tmp_path)
            layer = LargeKernelConv2d(conv, (16, 32), cache=cache)
            cache.put(layer.cache_key(x), choice)
            out = layer(x)
            assert layer.plans[(2, 30, 30, "cpu", "channels_last")] == choice
            assert out.is_contiguous(memory_format=torch.channels_last)  # the input's memory format
            assert torch.allclose(out, ref, atol=1e-4)


def test_network_memory_format_is_measured_and_cached(monkeypatch):
    counter = _count_timings(monkeypatch)
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny").eval()
    x = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        ref = net(x)
    fast = optimize_for_inference(net)
    out = fast(x)
    assert fast._chosen in ("channels_last", "contiguous")
    assert torch.allclose(out, ref, atol=1e-4) and out.is_contiguous()
    measured = counter[0]
    assert measured >= 1
    again = optimize_for_inference(net)
    assert torch.allclose(again(x), ref, atol=1e-4)
    assert counter[0] == measured and again._chosen == fast._chosen  # the second network reuses every choice
    fixed = optimize_for_inference(net, memory_format="contiguous")
    assert torch.allclose(fixed(x), ref, atol=1e-4) and fixed._chosen == "contiguous"


def test_unknown_memory_format_is_refused():
    from monai_lkcfusion.errors import FusionInputError

    with pytest.raises(FusionInputError, match="memory_format"):
        optimize_for_inference(LKCFUNet.from_preset("tiny"), memory_format="nhwc")
