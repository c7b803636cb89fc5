"""The differentiable FFT convolution used for training: same outputs and gradients as the direct convolution,
parameters shared with the network it is swapped into, checkpoints unchanged, and switched on by train.json."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_lkcfusion.engines import bundle_config
from monai_lkcfusion.losses import FusionLoss
from monai_lkcfusion.networks import LKCFUNet, SpectralConv2d, spectral_conv2d, use_spectral_convolutions


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


@pytest.mark.parametrize("enabled", [True, False])
def test_train_config_switches_spectral_convolutions(enabled):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle_config("train.json"))
    parser["device"] = "$torch.device('cpu')"
    parser["spectral_convolutions"] = enabled
    net = parser.get_parsed_content("network")
    assert any(isinstance(m, SpectralConv2d) for m in net.modules()) is enabled
