"""The differentiable FFT convolution used for training: same outputs and gradients as the direct convolution,
parameters shared with the network it is swapped into, checkpoints unchanged, swapped in only where measured faster
(timings cached per machine), and switched on by train.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_lkcfusion.engines import bundle_config
from monai_lkcfusion.losses import FusionLoss
from monai_lkcfusion.machine import machine_key
from monai_lkcfusion.networks import (
    ConvCase,
    ConvTiming,
    LKCFUNet,
    SpectralConv2d,
    prefers_spectral,
    spectral_conv2d,
    spectral_layer_choice,
    use_spectral_convolutions,
)
from monai_lkcfusion.networks import calibration, fft_training

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("c_in", "c_out", "groups", "k", "size", "bias"),
    [
        (3, 5, 1, 7, (20, 33), True),
        (4, 4, 4, 15, (17, 16), False),
        (2, 1, 1, 3, (9, 40), True),
        (6, 6, 6, 11, (64, 64), True),
    ],
)
def test_matches_direct_convolution_and_its_gradients(c_in, c_out, groups, k, size, bias):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(2, c_in, *size, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(c_out, c_in // groups, k, k, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(c_out, dtype=torch.float64, generator=gen, requires_grad=True) if bias else None
    target = torch.randn(2, c_out, *size, dtype=torch.float64, generator=gen)
    results = []
    for conv in (lambda: F.conv2d(x, w, b, padding=k // 2, groups=groups), lambda: spectral_conv2d(x, w, b, groups)):
        y = conv()
        grads = torch.autograd.grad((y * target).sum(), [t for t in (x, w, b) if t is not None])
        results.append((y, grads))
    (y_ref, g_ref), (y, g) = results
    assert y.shape == y_ref.shape == (2, c_out, *size)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(g, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_float32_error_is_rounding_only():
    x = torch.rand(4, 6, 256, 256)
    conv = nn.Conv2d(6, 6, 15, padding=7)
    direct = conv(x)
    error = (spectral_conv2d(x, conv.weight, conv.bias, 1) - direct).abs().max() / direct.abs().max()
    assert error < 1e-5


def test_swap_shares_parameters_and_keeps_the_state_dict():
    net = LKCFUNet.from_preset("small")
    params = {name: p for name, p in net.named_parameters()}
    keys = list(net.state_dict())
    large = [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] >= 7]
    assert use_spectral_convolutions(net) is net
    swapped = [name for name, m in net.named_modules() if isinstance(m, SpectralConv2d)]
    assert swapped == large and len(swapped) >= 10
    assert all(m.kernel_size[0] < 7 for m in net.modules() if type(m) is nn.Conv2d)
    assert all(p is params[name] for name, p in net.named_parameters())
    assert list(net.state_dict()) == keys
    LKCFUNet.from_preset("small").load_state_dict(net.state_dict())  # loads into the plain network


def test_network_training_steps_match_the_direct_network():
    torch.manual_seed(0)
    plain = LKCFUNet.from_preset("small").double()
    spectral = use_spectral_convolutions(copy.deepcopy(plain), min_kernel_size=3)
    x = torch.rand(2, 2, 40, 48, dtype=torch.float64)
    loss = FusionLoss()
    for net in (plain, spectral):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):
            torch.manual_seed(1)  # same drop-path draws in both networks
            optimizer.zero_grad()
            loss(net(x), x).backward()
            optimizer.step()
    for (name, a), b in zip(plain.state_dict().items(), spectral.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8, msg=name)
    plain.eval(), spectral.eval()
    torch.testing.assert_close(spectral(x), plain(x), rtol=1e-8, atol=1e-8)


class _TwoScales(nn.Module):
    """A dense 7x7 and a depthwise 9x9 layer at full resolution, two equal dense 7x7 layers at half resolution and a
    3x3 layer (below the kernel size considered)."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Conv2d(2, 4, 7, padding=3)
        self.depthwise = nn.Conv2d(4, 4, 9, padding=4, groups=4, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.coarse = nn.Conv2d(4, 4, 7, padding=3)
        self.twin = nn.Conv2d(4, 4, 7, padding=3)
        self.small = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(self.norm(self.depthwise(self.dense(x))), 2)  # (B, 4, H / 2, W / 2)
        return self.small(self.twin(self.coarse(x)))


class _Timer:
    """Fake timings: the FFT path is twice as fast for depthwise layers and twice as slow for dense ones."""

    def __init__(self) -> None:
        self.cases: list[ConvCase] = []

    def __call__(self, case: ConvCase) -> ConvTiming:
        self.cases.append(case)
        return ConvTiming(1.0, 0.5) if case.groups > 1 else ConvTiming(1.0, 2.0)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LKCFUSION_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_decision_rule_needs_the_margin():
    assert prefers_spectral(ConvTiming(direct_s=1.0, spectral_s=0.5))
    assert not prefers_spectral(ConvTiming(direct_s=1.0, spectral_s=0.9))  # faster, but within the margin
    assert prefers_spectral(ConvTiming(direct_s=1.0, spectral_s=0.9), min_speedup=1.1)
    assert not prefers_spectral(ConvTiming(direct_s=1.0, spectral_s=3.3))  # the official preset's dense layers


def test_measured_policy_swaps_only_the_layers_measured_faster(cache_dir):
    net = _TwoScales()
    state = copy.deepcopy(net.state_dict())
    rng = torch.get_rng_state()
    timer = _Timer()
    assert use_spectral_convolutions(net, policy="measured", sample_shape=(3, 2, 20, 24), timer=timer) is net
    kinds = {name: type(m) for name, m in net.named_children() if isinstance(m, nn.Conv2d)}
    assert kinds == {"dense": nn.Conv2d, "depthwise": SpectralConv2d, "coarse": nn.Conv2d, "twin": nn.Conv2d,
                     "small": nn.Conv2d}
    # each distinct (layer, input shape) once, at the resolution the layer sees
    assert [case.input_shape for case in timer.cases] == [(3, 2, 20, 24), (3, 4, 20, 24), (3, 4, 10, 12)]
    assert [(case.in_channels, case.out_channels, case.kernel_size, case.groups) for case in timer.cases] == [
        (2, 4, 7, 1), (4, 4, 9, 4), (4, 4, 7, 1)
    ]
    # the sample pass (on the meta device) left the weights, running statistics and random state alone
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, state[name], msg=name)
    assert torch.equal(torch.get_rng_state(), rng) and net.training


def test_choice_on_lkcfunet_sees_each_level_resolution(cache_dir):
    timer = _Timer()
    choice = spectral_layer_choice(LKCFUNet.from_preset("small"), (2, 2, 32, 32), timer=timer)
    assert {case.input_shape[2:] for case in timer.cases} == {(32, 32), (16, 16)}
    assert len(timer.cases) == len({layer.case for layer in choice.values()}) < len(choice)
    spectral = [name for name, layer in choice.items() if layer.spectral]
    assert spectral and all(choice[name].case.groups > 1 for name in spectral)


def test_cache_is_reused_and_keyed_by_machine(cache_dir, monkeypatch):
    first = _Timer()
    choice = spectral_layer_choice(_TwoScales(), (2, 2, 16, 16), timer=first)
    assert len(first.cases) == 3
    stored = json.loads((cache_dir / "spectral_training.json").read_text())
    assert set(stored) == {machine_key()}
    assert stored[machine_key()][first.cases[1].key] == {"direct_s": 1.0, "spectral_s": 0.5}

    again = _Timer()
    assert spectral_layer_choice(_TwoScales(), (2, 2, 16, 16), timer=again) == choice
    assert again.cases == []  # nothing measured twice
    other_shape = _Timer()
    spectral_layer_choice(_TwoScales(), (2, 2, 16, 32), timer=other_shape)
    assert len(other_shape.cases) == 3

    monkeypatch.setattr(calibration, "machine_key", lambda: "another CPU [avx2] torch 0")
    other_machine = _Timer()
    spectral_layer_choice(_TwoScales(), (2, 2, 16, 16), timer=other_machine)
    assert len(other_machine.cases) == 3
    machines = json.loads((cache_dir / "spectral_training.json").read_text())
    assert set(machines) == {machine_key(), "another CPU [avx2] torch 0"}


@pytest.mark.parametrize(
    "content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"KEY": {"2->4": 1, "4->4": {"direct_s": "x"}}}']
)
def test_corrupt_cache_is_ignored_and_replaced(cache_dir, content):
    cache_dir.mkdir()
    path = cache_dir / "spectral_training.json"
    path.write_bytes(content.replace(b"KEY", machine_key().encode()))
    timer = _Timer()
    choice = spectral_layer_choice(_TwoScales(), (2, 2, 16, 16), timer=timer)
    assert len(timer.cases) == 3 and choice["depthwise"].spectral and not choice["dense"].spectral
    assert len(json.loads(path.read_text())[machine_key()]) >= 3


def test_unwritable_cache_does_not_stop_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("LKCFUSION_CACHE_DIR", str(blocker))  # the cache folder cannot be created
    net = _TwoScales()
    with pytest.warns(UserWarning, match="not cached"):
        use_spectral_convolutions(net, policy="measured", sample_shape=(2, 2, 16, 16), timer=_Timer())
    assert isinstance(net.depthwise, SpectralConv2d) and list(tmp_path.iterdir()) == [blocker]


def test_layers_over_the_memory_limit_stay_direct_untimed(cache_dir):
    timer = _Timer()
    choice = spectral_layer_choice(_TwoScales(), (2, 2, 16, 16), max_spectrum_mib=0.0, timer=timer)
    assert timer.cases == [] and all(layer.timing is None and not layer.spectral for layer in choice.values())
    assert not cache_dir.exists()
    # the official preset's widest layer keeps 839 MiB of spectra for a batch of 2 64x64 crops
    case = ConvCase(256, 128, 15, 1, True, (2, 256, 64, 64))
    assert 800 * 2**20 < case.spectrum_bytes() < 900 * 2**20


def test_measured_policy_end_to_end_with_real_timings(cache_dir):
    torch.manual_seed(0)
    plain = _TwoScales()
    net = use_spectral_convolutions(copy.deepcopy(plain), policy="measured", sample_shape=(2, 2, 48, 48))
    timer = _Timer()
    choice = spectral_layer_choice(net, (2, 2, 48, 48), timer=timer)  # from the cache: the same decisions...
    assert timer.cases == []
    # ...for the layers still direct; the swapped ones are SpectralConv2d now, no longer candidates
    assert all(not layer.spectral and layer.timing.direct_s > 0 for layer in choice.values())
    swapped = {name for name, m in net.named_children() if isinstance(m, SpectralConv2d)}
    assert swapped.isdisjoint(choice) and swapped | set(choice) == {"dense", "depthwise", "coarse", "twin"}
    x = torch.rand(2, 2, 48, 48)
    plain.eval(), net.eval()
    torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-5)


def test_policy_errors():
    with pytest.raises(ValueError, match="policy"):
        use_spectral_convolutions(_TwoScales(), policy="fastest")
    with pytest.raises(ValueError, match="sample_shape"):
        use_spectral_convolutions(_TwoScales(), policy="measured")


@pytest.mark.parametrize(("enabled", "policy"), [(True, "measured"), (True, "all"), (False, "measured")])
def test_train_config_switches_spectral_convolutions(enabled, policy, cache_dir, monkeypatch):
    from monai.bundle import ConfigParser

    timer = _Timer()
    monkeypatch.setattr(fft_training, "time_convolution", timer)
    parser = ConfigParser()
    parser.read_config(bundle_config("train.json"))
    parser["device"] = "$torch.device('cpu')"
    assert parser.get_parsed_content("spectral_convolutions") is True  # on by default on the CPU
    assert parser.get_parsed_content("train_batch_shape") == (32, 2, 64, 64)  # 16 images x 2 crops
    parser["spectral_convolutions"] = enabled
    parser["spectral_policy"] = policy
    net = parser.get_parsed_content("network")
    spectral = [m for m in net.modules() if isinstance(m, SpectralConv2d)]
    assert bool(spectral) is enabled
    if enabled and policy == "measured":
        assert all(m.groups > 1 for m in spectral) and {case.input_shape[0] for case in timer.cases} == {32}
    if enabled and policy == "all":
        assert any(m.groups == 1 for m in spectral)
    assert timer.cases == [] or (enabled and policy == "measured")


def test_train_config_shapes_and_cuda_default():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([bundle_config("train.json"), REPO / "configs" / "default_model_finetune.json"])
    assert parser.get_parsed_content("train_batch_shape") == (4, 2, 256, 256)  # whole slices
    parser["device"] = "$torch.device('cuda')"
    assert parser.get_parsed_content("spectral_convolutions") is False  # CUDA: direct convolutions
