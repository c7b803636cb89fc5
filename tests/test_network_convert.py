"""Official-checkpoint conversion, on state dicts built here by the official code's key names and shapes."""

from __future__ import annotations

import pytest
import torch

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import (
    LKCFUNet,
    convert_official_state_dict,
    load_network,
    load_official_checkpoint,
    official_config,
)


def official_state_dict(
    features: int = 8,
    width: int = 16,
    kernels: tuple[int, ...] = (15, 3),
    blocks: int = 2,
    middle: int = 3,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A state dict named and shaped like the official ``UNet`` (models/UNets/DFMNet_UNet_skl4.py).

    The official layout: ``init_conv``; ``IN_conv`` = (BatchNorm, ReLU, Dropout, Conv15x15); ``downs`` = per level
    ``ResnetBlock`` then RepLK blocks, and a ``Downsample`` between levels; ``mid`` = 2 RepLK; ``ups`` = per level
    (deepest first) ``MultiScaleGatedAttn``, ``ResnetBlock(2C->C)``, RepLK blocks (the last one at the top level is
    ``ResnetBlock(C+features->C)``) and an ``Upsample`` between levels; ``final_conv`` = (GroupNorm, ReLU, Id, Conv).
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def rand(*shape: int) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=gen) * 0.2

    def conv(name: str, c_out: int, c_in: int, k: int, bias: bool = True) -> None:
        state[f"{name}.weight"] = rand(c_out, c_in, k, k)
        if bias:
            state[f"{name}.bias"] = rand(c_out)

    def affine(name: str, c: int) -> None:  # GroupNorm
        state[f"{name}.weight"] = rand(c) + 1
        state[f"{name}.bias"] = rand(c)

    def batchnorm(name: str, c: int) -> None:
        affine(name, c)
        state[f"{name}.running_mean"] = rand(c)
        state[f"{name}.running_var"] = rand(c).abs() + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(11, device=device)

    def resnet_block(p: str, c_in: int, c_out: int, k: int) -> None:
        affine(f"{p}.block1.block.0", c_in)
        conv(f"{p}.block1.block.3", c_out, c_in, k)
        affine(f"{p}.block2.block.0", c_out)
        conv(f"{p}.block2.block.3", c_out, c_out, k)
        if c_in != c_out:
            conv(f"{p}.res_conv", c_out, c_in, 1)

    def replk(p: str, c: int, k: int) -> None:
        inner = int(1.5 * c)
        affine(f"{p}.prelkb_bn", c)
        conv(f"{p}.pw1.conv", inner, c, 1, bias=False)
        affine(f"{p}.pw1.bn", inner)
        conv(f"{p}.large_kernel.lkb_origin.conv", inner, 1, k, bias=False)
        affine(f"{p}.large_kernel.lkb_origin.bn", inner)
        conv(f"{p}.pw2.conv", c, inner, 1, bias=False)
        affine(f"{p}.pw2.bn", c)

    def gated_attention(p: str, c: int) -> None:
        conv(f"{p}.multi.local.ca.0", c // 8, c, 1)
        conv(f"{p}.multi.local.ca.2", c, c // 8, 1)
        conv(f"{p}.multi.global_.proj.0", 1, 2, 1)
        batchnorm(f"{p}.multi.global_.proj.1", 1)
        batchnorm(f"{p}.multi.bn", c)
        conv(f"{p}.selection", 2, c, 1)
        conv(f"{p}.proj", c, c, 1)
        batchnorm(f"{p}.bn", c)
        conv(f"{p}.conv_block.0", 2 * c, c, 1)

    levels = len(kernels)
    conv("init_conv", features, 2, 3)
    batchnorm("IN_conv.0", features)
    conv("IN_conv.3", width, features, 15)
    j = 0
    for level, k in enumerate(kernels):
        resnet_block(f"downs.{j}.res_block", width, width, k)
        j += 1
        for _ in range(blocks - 1):
            replk(f"downs.{j}.res_block", width, k)
            j += 1
        if level < levels - 1:
            conv(f"downs.{j}.conv", width, width, 3)
            j += 1
    for b in range(2):
        replk(f"mid.{b}.res_block", width, middle)
    j = 0
    for level in reversed(range(levels)):
        k = kernels[level]
        gated_attention(f"ups.{j}", width)
        resnet_block(f"ups.{j + 1}.res_block", 2 * width, width, k)
        j += 2
        for i in range(1, blocks + 1):
            if level == 0 and i == blocks:
                resnet_block(f"ups.{j}.res_block", width + features, width, k)
            else:
                replk(f"ups.{j}.res_block", width, k)
            j += 1
        if level > 0:
            conv(f"ups.{j}.conv", width, width, 3)
            j += 1
    affine("final_conv.block.0", width)
    conv("final_conv.block.3", 1, width, 3)
    return state


def test_released_layout_converts_completely():
    state = official_state_dict(features=32, width=128, kernels=(15, 11, 5), middle=5, device="meta")
    params = sum(v.numel() for k, v in state.items() if not k.rsplit(".", 1)[1].startswith(("running", "num_")))
    assert params == 41_174_438
    config, converted = convert_official_state_dict(state)
    with torch.device("meta"):
        reference = LKCFUNet.from_preset("official").config
    for key in ("in_channels", "out_channels", "features", "channel_mults", "kernel_sizes", "num_blocks"):
        assert config[key] == reference[key]
    assert config["middle_kernel"] == 5 and config["norm"] == "official"
    assert len(converted) == len(state)  # every official tensor, BatchNorm statistics included, has a place


def test_tensors_land_in_place_and_input_channels_are_swapped():
    state = official_state_dict()
    net = load_official_checkpoint(state)
    assert not net.training
    assert official_config(state)["channel_mults"] == (2, 2)
    # first conv: official input is cat(other, MRI), ours cat(MRI, other)
    torch.testing.assert_close(net.stem_conv.weight[:, 0], state["init_conv.weight"][:, 1])
    torch.testing.assert_close(net.stem_conv.weight[:, 1], state["init_conv.weight"][:, 0])
    pairs = {
        "IN_conv.0.running_var": net.stem[0].running_var,
        "IN_conv.0.num_batches_tracked": net.stem[0].num_batches_tracked,
        "downs.1.res_block.large_kernel.lkb_origin.conv.weight": net.encoder[0].blocks[1].dw.weight,
        "downs.2.conv.bias": net.encoder[0].downsample.bias,
        "mid.1.res_block.pw2.bn.bias": net.middle[1].pw2_norm.bias,
        "ups.0.multi.global_.proj.1.running_mean": net.decoder[0].fusion.spatial_norm.running_mean,
        "ups.0.multi.local.ca.2.weight": net.decoder[0].fusion.channel_attention[3].weight,
        "ups.1.res_block.res_conv.weight": net.decoder[0].blocks[0].residual.weight,
        "ups.4.conv.weight": net.decoder[0].upsample.conv.weight,
        "ups.5.conv_block.0.bias": net.decoder[1].fusion.out_conv.bias,
        "ups.7.res_block.prelkb_bn.weight": net.decoder[1].blocks[1].pre_norm.weight,
        "ups.8.res_block.block2.block.3.weight": net.stem_skip_block.conv2.weight,
        "final_conv.block.3.bias": net.head[2].bias,
    }
    for key, tensor in pairs.items():
        assert torch.equal(state[key], tensor), key
    # the swap is exactly an input permutation: same network with the official channel order gives the same output
    unswapped = LKCFUNet(**net.config)
    unswapped.load_state_dict({**net.state_dict(), "stem_conv.weight": state["init_conv.weight"]})
    net, unswapped = net.double(), unswapped.double().eval()  # float64: the comparison is not blurred by rounding
    mri, other = torch.rand(2, 1, 1, 12, 8, dtype=torch.float64).unbind(0)
    with torch.no_grad():
        ours = net(torch.cat((mri, other), dim=1))
        official_order = unswapped(torch.cat((other, mri), dim=1))
        swapped_wrong = net(torch.cat((other, mri), dim=1))
    torch.testing.assert_close(ours, official_order)
    assert not torch.allclose(ours, swapped_wrong)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"model.{k}": v for k, v in sd.items()},  # torch.save(Model().state_dict()) as released
        lambda sd: {"model": {f"model.{k}": v for k, v in sd.items()}},
        lambda sd: {"state_dict": sd, "epoch": 999},
        lambda sd: {f"module.model.{k}": v for k, v in sd.items()},  # DataParallel
        lambda sd: sd,
    ],
)
def test_checkpoint_files_in_any_wrapping(tmp_path, wrap):
    state = official_state_dict(blocks=1)
    path = tmp_path / "best_MIF.pth"
    torch.save(wrap(state), path)
    net = load_official_checkpoint(path)
    assert net.config["num_blocks"] == 1
    assert torch.equal(net.head[2].weight, state["final_conv.block.3.weight"])
    x = torch.rand(1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_network(path)(x), net(x))  # load_network recognises official checkpoints


def test_missing_and_unknown_keys_are_named():
    state = official_state_dict()
    with pytest.raises(FusionInputError, match=r"missing .*ups\.0\.multi\.bn\.running_var"):
        load_official_checkpoint({k: v for k, v in state.items() if k != "ups.0.multi.bn.running_var"})
    extra = {**state, "ups.0.attn.qkv.weight": torch.zeros(1)}
    with pytest.raises(FusionInputError, match=r"unknown keys .*ups\.0\.attn\.qkv\.weight"):
        load_official_checkpoint(extra)
    many = {**state, **{f"extra.{i}.weight": torch.zeros(1) for i in range(8)}}
    with pytest.raises(FusionInputError, match="and 3 more"):
        load_official_checkpoint(many)
    bad = {**state, "mid.0.res_block.pw1.conv.weight": torch.zeros(3, 3, 1, 1)}
    shape_error = r"mid\.0\.res_block\.pw1\.conv\.weight \(3, 3, 1, 1\) != \(24, 16, 1, 1\)"
    with pytest.raises(FusionInputError, match=shape_error):
        load_official_checkpoint(bad)
    with pytest.raises(FusionInputError, match="not an official"):
        load_official_checkpoint(LKCFUNet.from_preset("tiny").state_dict())


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(FusionInputError, match="not found"):
        load_official_checkpoint(tmp_path / "best_MIF.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FusionInputError, match="junk.pth: not a PyTorch weights file"):
        load_official_checkpoint(tmp_path / "junk.pth")
    torch.save({"optimizer": {"lr": 1}}, tmp_path / "opt.pth")
    with pytest.raises(FusionInputError, match="no tensors"):
        load_official_checkpoint(tmp_path / "opt.pth")
