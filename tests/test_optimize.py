"""optimize_for_inference and FFT convolution: same outputs as the plain path, training path untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import LKCFUNet, optimize_for_inference
from monai_lkcfusion.networks.fft_conv import FFTConv2d, fft_conv_supported
from monai_lkcfusion.networks.optimize import LargeKernelConv2d, InferenceNetwork, fold_batch_norm

# a narrow network that keeps the released 15/11/5 kernels, so the FFT paths (dense and depthwise) are exercised
NARROW_LARGE = {"features": 4, "channel_mults": (2, 2, 2)}


def _randomise_batch_norms(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (folding must use them)."""
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)
    return net


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / (ref.max() - ref.min())).item()


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "groups", "shape", "fft_size"),
    [
        (3, 5, 15, 1, (3, 37, 53), 32),  # dense, odd size, batch 3, several tiles
        (4, 4, 7, 4, (2, 20, 9), 16),  # depthwise, image narrower than a tile
        (2, 6, 5, 1, (1, 16, 16), 64),  # one tile larger than the padded image
    ],
)
def test_fft_conv_matches_direct(cin, cout, kernel, groups, shape, fft_size):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups)
    x = torch.randn(shape[0], cin, *shape[1:])
    with torch.no_grad():
        ref = conv(x)
        out = FFTConv2d(conv, fft_size)(x)
    assert out.shape == ref.shape
    assert _relative_error(out, ref) < 1e-5


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_fft_conv_any_input_layout(layout):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 5, padding=2)
    x = torch.randn(2, 6, 24, 36)  # 24 and 36 are whole multiples of the tile step 12: no cropped last tile
    with torch.no_grad():
        ref = conv(x)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "transposed":
            x = x.transpose(2, 3).contiguous().transpose(2, 3)
        out = FFTConv2d(conv, 16)(x)
    # a contiguous input gives a contiguous output (written in place, no conversion), any other channels-last
    expected = torch.contiguous_format if layout == "contiguous" else torch.channels_last
    assert out.is_contiguous(memory_format=expected)
    assert _relative_error(out, ref) < 1e-5


def test_fft_conv_rejects_unsupported():
    strided = nn.Conv2d(2, 2, 5, stride=2, padding=2)
    assert not fft_conv_supported(strided)
    assert not fft_conv_supported(nn.Conv2d(2, 2, 5, padding=0))
    assert fft_conv_supported(nn.Conv2d(4, 4, 5, padding=2, groups=4))
    with pytest.raises(ValueError, match="stride-1"):
        FFTConv2d(strided, 16)
    with pytest.raises(ValueError, match="exceed"):
        FFTConv2d(nn.Conv2d(2, 2, 15, padding=7), 15)


def test_fold_batch_norm_exact():
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
    _randomise_batch_norms(norm).eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.allclose(fold_batch_norm(conv, norm)(x), norm(conv(x)), atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "overrides", "shape", "calibrate"),
    [
        ("tiny", {}, (3, 2, 37, 53), False),
        ("official", NARROW_LARGE, (3, 2, 37, 53), False),
        ("official", NARROW_LARGE, (1, 2, 32, 32), True),  # also times the candidates and the memory formats
        ("official", {**NARROW_LARGE, "output_mode": "max_residual"}, (2, 2, 37, 53), False),
    ],
)
def test_optimized_matches_plain(preset, overrides, shape, calibrate):
    torch.manual_seed(0)
    net = _randomise_batch_norms(LKCFUNet.from_preset(preset, **overrides)).eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        ref = net(x)
    fast = optimize_for_inference(net, calibrate=calibrate)
    assert isinstance(fast, InferenceNetwork)
    first, second = fast(x), fast(x)  # first call tunes, second uses the plans
    assert first.shape == ref.shape == (shape[0], 1, *shape[2:])
    assert _relative_error(first, ref) < 1e-4
    assert _relative_error(second, ref) < 1e-4
    assert not second.requires_grad


def test_optimized_large_kernels_use_fft_when_forced():
    torch.manual_seed(0)
    net = _randomise_batch_norms(LKCFUNet.from_preset("official", **NARROW_LARGE)).eval()
    x = torch.rand(2, 2, 40, 40)
    with torch.no_grad():
        ref = net(x)
    fast = optimize_for_inference(net, fft_sizes=(32,), calibrate=False)
    tuned = [m for m in fast.modules() if isinstance(m, LargeKernelConv2d)]
    assert tuned and all(m.kernel_size >= 7 for m in tuned)
    # a cost model whose only FFT size is 32 still picks the direct path for some layers; force FFT everywhere
    for module in tuned:
        module.fft_sizes = (32,)
        module.plans = {(2, h, w, "cpu", "channels_last"): 32 for h, w in ((40, 40), (20, 20), (10, 10))}
    out = fast(x)
    assert all(len(m.fft) == 1 for m in tuned)
    assert _relative_error(out, ref) < 1e-4


def test_torchscript_network_runs_through_fuse(tmp_path):
    """A TorchScript file (as `lkcfusion export` writes) is a network ``fuse`` takes with its defaults: nothing to
    rewrite, run as it is, same output as the module it was made from."""
    from monai_lkcfusion.inference import fuse

    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny").eval()
    torch.jit.script(net).save(str(tmp_path / "m.ts"))
    scripted = torch.jit.load(str(tmp_path / "m.ts"), map_location="cpu")
    fast = optimize_for_inference(scripted)
    x = torch.rand(1, 2, 36, 28)
    out = fast(x)
    assert isinstance(fast, InferenceNetwork) and not out.requires_grad
    with torch.no_grad():
        assert torch.allclose(out, net(x), atol=1e-6)
    pair = np.random.default_rng(0).random((2, 36, 28), dtype=np.float32)
    plain = fuse(pair[0], pair[1], model=net, optimize=False)  # direct convolutions, as the scripted module runs
    assert np.allclose(fuse(pair[0], pair[1], model=scripted), plain, atol=1e-5)


def test_training_path_untouched():
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("official", **NARROW_LARGE).train()
    untouched = copy.deepcopy(net)
    fast = optimize_for_inference(net)
    fast(torch.rand(1, 2, 32, 32))
    assert net.training
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), untouched.state_dict().values()))
    assert all(p.requires_grad for p in net.parameters())
    assert not any(isinstance(m, (LargeKernelConv2d, FFTConv2d)) for m in net.modules())
    # the plain network still trains: same loss and gradients as a copy taken before optimising
    x = torch.rand(2, 2, 16, 16)
    for model in (net, untouched):
        torch.manual_seed(1)  # same dropout masks
        model(x).square().mean().backward()
    for a, b in zip(net.parameters(), untouched.parameters()):
        assert torch.equal(a.grad, b.grad)
    with pytest.raises(FusionInputError, match="inference only"):
        fast.train()


def test_disabled_returns_plain_copy():
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny").train()
    plain = optimize_for_inference(net, enabled=False)
    assert isinstance(plain, LKCFUNet) and plain is not net and not plain.training
    assert net.training
    x = torch.rand(2, 2, 24, 24)
    with torch.no_grad():
        assert torch.equal(plain(x), net.eval()(x))
