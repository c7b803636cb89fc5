"""load_network / save_network round trips, architecture inference, mismatch messages, default path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch

from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import LKCFUNet, default_weights_path, infer_config, load_network, save_network


def _trained_like(net: LKCFUNet) -> LKCFUNet:
    """Give the network non-default tensors (BatchNorm statistics included) so a round trip can be told apart."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.dtype.is_floating_point:
                fill = torch.rand_like(tensor) + 0.5 if "running_var" in name else 0.1 * torch.randn_like(tensor)
                tensor.copy_(fill)
    return net.eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"preset": "tiny"},
        {"preset": "tiny", "norm": "bn", "num_blocks": 2, "channel_mults": (2, 3, 4), "kernel_sizes": (7, 5, 3)},
        {"preset": "tiny", "norm": {"stem": "instance", "replk": "group", "mafm": "layer"}, "middle_kernel": 5},
    ],
)
def test_round_trip_rebuilds_the_architecture(tmp_path, suffix, kwargs):
    kwargs = dict(kwargs)
    net = _trained_like(LKCFUNet.from_preset(kwargs.pop("preset"), **kwargs))
    path = save_network(net, tmp_path / "sub" / f"model{suffix}")
    loaded = load_network(path)
    assert not loaded.training
    assert loaded.config == net.config
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(2, 2, 19, 27)
    with torch.no_grad():
        out = net(x)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(loaded(x), out)


def test_group_and_instance_norms_are_told_apart_by_the_stored_scheme(tmp_path):
    # GroupNorm(32), GroupNorm(1) and InstanceNorm have identically shaped tensors: the scheme is stored with them
    for norm in ("official", "ingn", {"resblock": "layer", "head": "instance"}):
        net = LKCFUNet.from_preset("tiny", norm=norm)
        assert infer_config(net.state_dict())["norm"] == net.config["norm"]
    legacy = {k: v for k, v in LKCFUNet.from_preset("tiny", norm="bn").state_dict().items() if k != "norm_kinds"}
    assert set(infer_config(legacy)["norm"].values()) == {"batch"}  # without the buffer: BatchNorm by its statistics


def test_wrapped_and_prefixed_checkpoints(tmp_path):
    net = _trained_like(LKCFUNet.from_preset("tiny"))
    state = net.state_dict()
    for i, checkpoint in enumerate(
        [{"model": state}, {"network": state, "optimizer": {"lr": 1.0}}, {f"module.{k}": v for k, v in state.items()},
         {f"_orig_mod.{k}": v for k, v in state.items()},  # torch.compile(net).state_dict()
         {f"net.{k}": v for k, v in state.items()}]  # a wrapper module that holds the network as .net
    ):
        torch.save(checkpoint, tmp_path / f"c{i}.pt")
        assert torch.equal(load_network(tmp_path / f"c{i}.pt").head[2].weight, net.head[2].weight)
    assert torch.equal(load_network(state).stem_conv.weight, net.stem_conv.weight)


def test_expected_preset_mismatch_names_the_difference(tmp_path):
    path = save_network(LKCFUNet.from_preset("tiny", kernel_sizes=(3, 3)), tmp_path / "m.safetensors")
    with pytest.raises(FusionInputError, match=r"kernel sizes \(3, 3\), preset 'tiny' has \(5, 3\)"):
        load_network(path, expected="tiny")
    with pytest.raises(FusionInputError, match=r"m\.safetensors: weights are for .*channel multipliers \(1, 2\)"):
        load_network(path, expected="official")
    with pytest.raises(FusionInputError, match="norm scheme 'official', the requested network has 'bn'"):
        load_network(path, expected={"norm": "bn"})
    assert load_network(path, expected={"kernel_sizes": (3, 3), "dropout": 0.0}).config["dropout"] == 0.0
    with pytest.raises(FusionInputError, match="'width'"):
        load_network(path, expected={"width": 4})


def test_bad_files_and_foreign_state_dicts(tmp_path):
    with pytest.raises(FusionInputError, match="nothere.pt: weights file not found"):
        load_network(tmp_path / "nothere.pt")
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(FusionInputError, match="not an LKC-FUNet state dict"):
        load_network(tmp_path / "other.pt")
    state = LKCFUNet.from_preset("tiny").state_dict()
    state["head.5.weight"] = torch.zeros(1)
    del state["middle.1.dw.weight"]
    with pytest.raises(FusionInputError, match=r"unknown keys head\.5\.weight; missing keys middle\.1\.dw\.weight"):
        load_network(state)


def test_default_weights_path_is_in_the_bundle():
    """The default weights are package data (``monai_lkcfusion.bundle``), here the checkout's bundle/ folder."""
    path = default_weights_path()
    assert isinstance(path, Path) and path.is_file()
    assert path == Path(str(resources.files("monai_lkcfusion.bundle").joinpath("models", "model.pt")))
    assert path.parents[1] == Path(__file__).resolve().parents[1] / "bundle"  # editable install: one copy


def test_plain_load_state_dict_refuses_another_norm_scheme():
    # GroupNorm/InstanceNorm tensors have the same shapes: without the check these weights would load silently
    official = LKCFUNet.from_preset("tiny", norm={"stem": "group", "mafm": "group"})
    ingn = LKCFUNet.from_preset("tiny", norm="ingn")
    with pytest.raises(FusionInputError, match="weights are for norm scheme .*'stem': 'instance'"):
        official.load_state_dict(ingn.state_dict())
    LKCFUNet.from_preset("tiny", norm="ingn").load_state_dict(ingn.state_dict())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_an_interrupted_save_keeps_the_earlier_weights(tmp_path: Path, monkeypatch, suffix: str) -> None:
    """``save_network`` wrote in place: a Ctrl-C or a full disk mid-write left a cut weights file instead of the
    earlier one. The file is written beside it and moved in whole."""
    import safetensors.torch

    path = save_network(LKCFUNet.from_preset("tiny"), tmp_path / f"model{suffix}")
    before = path.read_bytes()

    def interrupted(state, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_network(LKCFUNet.from_preset("tiny"), path)  # other random weights
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
