"""LKCFUNet structure, presets, norm schemes, any-size forward, TorchScript and ONNX."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import (
    NETWORK_PRESETS,
    NORM_SCHEMES,
    LKCFUNet,
    MultipathAdaptiveFusion,
    RepLKBlock,
    ResBlock,
    group_count,
    resolve_norm_scheme,
)


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _meta(preset: str, **overrides) -> LKCFUNet:
    with torch.device("meta"):
        return LKCFUNet.from_preset(preset, **overrides)


def test_official_parameter_count_and_structure():
    net = _meta("official")
    assert _count(net) == 41_174_438
    assert net.size_divisible == 4
    # released norm layers: BN in stem and MAFM, GN(32) in residual blocks / head, GN(1) in RepLK blocks
    assert isinstance(net.stem[0], nn.BatchNorm2d) and net.stem[3].kernel_size == (15, 15)
    res = net.encoder[0].blocks[0]
    assert isinstance(res, ResBlock) and res.norm1.num_groups == 32 and res.conv1.kernel_size == (15, 15)
    replk = net.encoder[1].blocks[1]
    assert isinstance(replk, RepLKBlock) and replk.pre_norm.num_groups == 1 and replk.dw.kernel_size == (11, 11)
    assert replk.dw.groups == 192 and replk.pw1.bias is None and replk.dw.bias is None
    assert [m.blocks[1].dw.kernel_size[0] for m in net.encoder] == [15, 11, 5]
    assert [b.dw.kernel_size[0] for b in net.middle] == [5, 5]
    fusion = net.decoder[0].fusion
    assert isinstance(fusion, MultipathAdaptiveFusion) and isinstance(fusion.mix_norm, nn.BatchNorm2d)
    assert fusion.out_conv.out_channels == 256 and fusion.channel_attention[1].out_channels == 16
    assert net.stem_skip_block.conv1.in_channels == 160 and net.stem_skip_block.norm1.num_groups == 32
    assert len(net.decoder[0].blocks) == 3 and len(net.decoder[2].blocks) == 2
    assert net.head[2].out_channels == 1 and net.head[0].num_groups == 32


@pytest.mark.parametrize("preset", sorted(NETWORK_PRESETS))
def test_presets_build_with_their_settings(preset):
    net = _meta(preset)
    for key, value in NETWORK_PRESETS[preset].items():
        assert net.config[key] == (resolve_norm_scheme(value) if key == "norm" else value)
    assert net.config["norm"] == resolve_norm_scheme(NETWORK_PRESETS[preset].get("norm", "official"))


def test_ablation_presets_norm_and_kernels():
    bn = _meta("bn_3x3")
    assert all(isinstance(m, nn.BatchNorm2d) for m in bn.modules() if isinstance(m, (nn.GroupNorm, nn.InstanceNorm2d,
                                                                                       nn.BatchNorm2d)))
    assert {m.kernel_size for m in bn.modules() if isinstance(m, nn.Conv2d)} <= {(1, 1), (3, 3)}
    ingn = _meta("ingn_large")
    kinds = {type(m) for m in ingn.modules()}
    assert nn.BatchNorm2d not in kinds and nn.InstanceNorm2d in kinds and nn.GroupNorm in kinds
    assert _count(_meta("bn_large")) == _count(_meta("official")) == _count(ingn)


def test_norm_scheme_by_dict_and_errors():
    net = LKCFUNet.from_preset("tiny", norm={"replk": "instance", "head": "batch"})
    assert net.config["norm"] == {**NORM_SCHEMES["official"], "replk": "instance", "head": "batch"}
    assert isinstance(net.middle[0].pre_norm, nn.InstanceNorm2d) and isinstance(net.head[0], nn.BatchNorm2d)
    with pytest.raises(FusionInputError, match="norm scheme 'nope'"):
        LKCFUNet(norm="nope")
    with pytest.raises(FusionInputError, match="sites"):
        LKCFUNet(norm={"decoder": "batch"})
    with pytest.raises(FusionInputError, match="kinds"):
        LKCFUNet(norm={"stem": "weird"})
    with pytest.raises(FusionInputError, match="preset 'huge'"):
        LKCFUNet.from_preset("huge")
    with pytest.raises(FusionInputError, match="same"):
        LKCFUNet(channel_mults=(1, 2), kernel_sizes=(3, 3, 3))
    with pytest.raises(FusionInputError, match="odd"):
        LKCFUNet(kernel_sizes=(4, 3, 3))


@pytest.mark.parametrize("channels,groups", [(128, 32), (160, 32), (24, 24), (48, 24), (6, 6), (36, 18), (1, 1)])
def test_group_count_largest_divisor_up_to_32(channels, groups):
    assert group_count(channels) == groups


@pytest.mark.parametrize(
    "preset,shape",
    [("tiny", (1, 2, 37, 53)), ("tiny", (3, 2, 16, 16)), ("tiny", (2, 2, 1, 1)), ("tiny", (1, 2, 5, 64)),
     ("small", (2, 2, 37, 53)), ("small", (1, 2, 5, 3))],
)
def test_any_size_forward_keeps_shape(preset, shape):
    torch.manual_seed(0)
    net = LKCFUNet.from_preset(preset).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    assert out.shape == (shape[0], 1, *shape[2:])
    assert torch.isfinite(out).all()


def test_eval_is_batch_independent_and_odd_sizes_are_replicate_padded():
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("small").eval()
    x = torch.rand(3, 2, 15, 11)
    with torch.no_grad():
        out = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(3)])
        padded = net(torch.nn.functional.pad(x, [0, 1, 0, 1], mode="replicate"))  # 16x12: no padding inside
    assert out.shape == (3, 1, 15, 11)
    torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, padded[:, :, :15, :11])


def test_training_step_updates_and_dropout_is_active_in_train_mode():
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny", dropout=0.5)
    x = torch.rand(4, 2, 16, 16)
    out = net(x)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))  # dropout + drop-path
        net.eval()
        assert torch.equal(net(x), net(x))


def test_torchscript_matches_eager():
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny").eval()
    scripted = torch.jit.script(net)
    for shape in [(1, 2, 37, 53), (2, 2, 16, 16)]:
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.slow
def test_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny").eval()
    path = tmp_path / "tiny.onnx"
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    torch.onnx.export(net, (torch.rand(2, 2, 37, 53),), str(path), input_names=["x"], dynamic_shapes={"x": dims},
                      dynamo=True)
    session = ort.InferenceSession(str(path))
    x = torch.rand(1, 2, 29, 18)
    (y,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), net(x), rtol=1e-4, atol=1e-4)


def test_base_preset_has_real_groups_and_roundtrips(tmp_path) -> None:
    """'base': the paper's kernels, GroupNorm layers with 4 groups (not per-channel), weights reload to the same net."""
    from monai_lkcfusion.networks import load_network, save_network

    net = LKCFUNet.from_preset("base")
    assert net.config["kernel_sizes"] == (15, 11, 5)
    groups = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm) and m.num_groups > 1]
    assert groups and all(m.num_groups == 4 and m.num_channels > 4 for m in groups)
    back = load_network(save_network(net, tmp_path / "base.pt"))
    assert back.config == net.config
    x = torch.rand(1, 2, 40, 36)
    assert torch.allclose(back.eval()(x), net.eval()(x))
    # the released layout keeps its tensors: no extra buffer for the default 32 groups
    assert "norm_groups" not in LKCFUNet.from_preset("small").state_dict()


def test_max_residual_output_starts_at_pixel_max_and_roundtrips(tmp_path) -> None:
    """'max_residual': output = max of the inputs + head; as_max_residual keeps the features and starts at pixel max."""
    from monai_lkcfusion.networks import as_max_residual, load_network, save_network

    torch.manual_seed(0)
    direct = LKCFUNet.from_preset("tiny").eval()
    x = torch.rand(2, 2, 37, 29)  # odd sizes: the max is taken before padding and added after cropping
    residual = as_max_residual(direct)
    assert residual.config == {**direct.config, "output_mode": "max_residual"} and not residual.training
    with torch.no_grad():
        assert torch.equal(residual(x), x.amax(dim=1, keepdim=True))
        torch.nn.init.normal_(residual.head[-1].weight, std=0.1)
        seen = []
        hook = residual.head[-1].register_forward_hook(lambda module, args, out: seen.append(out))
        fused = residual(x)
        hook.remove()
        correction = seen[0][..., : x.shape[-2], : x.shape[-1]]  # the head's (padded) output, cropped
        assert correction.abs().max() > 0.01
        torch.testing.assert_close(fused, x.amax(dim=1, keepdim=True) + correction)
    back = load_network(save_network(residual, tmp_path / "residual.pt"))
    assert back.config["output_mode"] == "max_residual"
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), residual(x))
    assert "output_mode" not in direct.state_dict()  # files of the released layout are unchanged
    # a preset names the layers, not the output mode; a config that names the mode is checked on it
    assert load_network(tmp_path / "residual.pt", expected="tiny").config["output_mode"] == "max_residual"
    with pytest.raises(FusionInputError, match="output mode max_residual, the requested network has direct"):
        load_network(tmp_path / "residual.pt", expected={"output_mode": "direct"})
    with pytest.raises(FusionInputError, match="already 'max_residual'"):
        as_max_residual(residual)
    with pytest.raises(FusionInputError, match="output_mode 'sum' is not one of"):
        LKCFUNet.from_preset("tiny", output_mode="sum")
