"""TorchScript and ONNX exports give the network's output (tiny preset, sizes not divisible by the stride)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_lkcfusion.cli import main
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.export import export_network
from monai_lkcfusion.networks import LKCFUNet, save_network

SHAPES = [(1, 2, 37, 45), (3, 2, 16, 20), (2, 2, 5, 7)]


@pytest.fixture(scope="module")
def tiny_net() -> LKCFUNet:
    torch.manual_seed(0)
    net = LKCFUNet.from_preset("tiny").eval()
    for module in net.modules():  # non-trivial BatchNorm statistics, so eval-mode normalisation is exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return net


def _reference(net: LKCFUNet, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net(x).numpy()


def test_torchscript_matches_network(tmp_path, tiny_net):
    tiny_net.train()  # a network mid-training stayed in eval mode after an export (hand-check helper)
    path = export_network(tiny_net, tmp_path / "model.ts", "torchscript")
    assert tiny_net.training
    tiny_net.eval()
    extra = {"lkcfusion.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["lkcfusion.json"])["size_divisible"] == str(tiny_net.size_divisible)
    for shape in SHAPES:
        x = torch.rand(*shape)
        with torch.no_grad():
            out = scripted(x).numpy()
        assert out.shape == (shape[0], 1, *shape[2:])
        np.testing.assert_allclose(out, _reference(tiny_net, x), atol=1e-4, rtol=0)


def test_onnx_matches_network_on_any_size(tmp_path, tiny_net):
    ort = pytest.importorskip("onnxruntime")
    path = export_network(tiny_net, tmp_path / "model.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "image"
    assert session.get_modelmeta().custom_metadata_map["size_divisible"] == str(tiny_net.size_divisible)
    for shape in SHAPES:
        x = torch.rand(*shape)
        (out,) = session.run(["fused"], {"image": x.numpy()})
        assert out.shape == (shape[0], 1, *shape[2:])
        np.testing.assert_allclose(out, _reference(tiny_net, x), atol=1e-4, rtol=0)


def test_cli_export_from_weights(tmp_path, tiny_net):
    weights = save_network(tiny_net, tmp_path / "tiny.safetensors")
    out = tmp_path / "cli" / "model.ts"
    assert main(["export", "--format", "torchscript", "-o", str(out), "--weights", str(weights)]) == 0
    x = torch.rand(1, 2, 23, 31)
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(out))(x).numpy(), _reference(tiny_net, x), atol=1e-4, rtol=0)


def test_cli_export_untrained_preset(tmp_path, capsys):
    """--preset alone exports that preset's untrained network, also when the bundle's weights are installed."""
    out = tmp_path / "tiny.ts"
    assert main(["export", "-o", str(out), "--preset", "tiny"]) == 0
    assert "untrained preset 'tiny'" in capsys.readouterr().out
    exported = torch.jit.load(str(out), map_location="cpu")
    assert sum(p.numel() for p in exported.parameters()) == sum(
        p.numel() for p in LKCFUNet.from_preset("tiny").parameters())


def test_cli_export_errors(tmp_path, tiny_net, capsys):
    weights = save_network(tiny_net, tmp_path / "tiny.pt")
    assert main(["export", "-o", str(tmp_path / "m.ts"), "--weights", str(weights), "--preset", "small"]) == 2
    assert main(["export", "-o", str(tmp_path / "m.ts"), "--weights", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("lkcfusion: error:") == 2 and "Traceback" not in err
    with pytest.raises(FusionInputError, match="--format"):
        export_network(tiny_net, tmp_path / "m.bin", "tflite")
    bad = {("-o", "m.xyz"): "extension '.xyz' names no export format",
           ("--format", "torchscript", "-o", "m.onnx"): "the extension .onnx says onnx, --format says torchscript",
           ("-o", "/proc/lkcfusion/m.ts"): "cannot write here"}
    for argv, problem in bad.items():
        argv = [str(tmp_path / a) if a.startswith("m.") else a for a in argv]
        assert main(["export", *argv, "--weights", str(weights)]) == 2
        err = capsys.readouterr().err
        assert problem in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt"]  # nothing written, no temporary left


def test_cli_export_format_from_the_extension(tmp_path, tiny_net):
    """``-o model.onnx`` writes ONNX (it used to write TorchScript under that name), ``.ts``/``.pt`` TorchScript."""
    onnx = pytest.importorskip("onnx")
    weights = save_network(tiny_net, tmp_path / "tiny.pt")
    for name in ("model.onnx", "model.ts", "scripted.pt"):
        assert main(["export", "-o", str(tmp_path / name), "--weights", str(weights)]) == 0
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))
    x = torch.rand(1, 2, 23, 31)
    for name in ("model.ts", "scripted.pt"):
        with torch.no_grad():
            out = torch.jit.load(str(tmp_path / name))(x).numpy()
        np.testing.assert_allclose(out, _reference(tiny_net, x), atol=1e-4, rtol=0)


def test_monai_bundle_ckpt_export_matches_network(tmp_path, tiny_net):
    """MONAI's own converter on the bundle's configs (``weights`` overridden with a tiny checkpoint)."""
    configs = Path(__file__).resolve().parents[1] / "bundle" / "configs"
    if not (configs / "inference.json").is_file():
        pytest.skip("bundle/configs/inference.json not written yet")
    ckpt = save_network(tiny_net, tmp_path / "tiny.pt")
    ts = tmp_path / "bundle.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts)]
    cmd += ["--ckpt_file", str(ckpt), "--meta_file", str(configs / "metadata.json")]
    cmd += ["--config_file", str(configs / "inference.json"), "--weights", str(ckpt)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["name"]
    for shape in SHAPES:
        x = torch.rand(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(scripted(x).numpy(), _reference(tiny_net, x), atol=1e-4, rtol=0)


def test_cli_onnx_export_prints_only_its_result(tmp_path, tiny_net):
    """A fresh process (torch reports its exporter's registry once per process): the export printed six lines of
    torch's own noise ("torchvision is not installed. Skipping torchvision::nms", a FutureWarning) on stderr."""
    pytest.importorskip("onnx")
    weights = save_network(tiny_net, tmp_path / "tiny.pt")
    result = subprocess.run([sys.executable, "-m", "monai_lkcfusion", "export", "-o", str(tmp_path / "m.onnx"),
                             "--weights", str(weights)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"wrote onnx model to {tmp_path / 'm.onnx'}")


def test_cli_export_keeps_an_existing_file_unless_overwrite(tmp_path, tiny_net, capsys):
    """``lkcfusion export`` replaced an existing file without a word; fuse refuses that without --overwrite."""
    weights = save_network(tiny_net, tmp_path / "tiny.pt")
    out = tmp_path / "model.ts"
    out.write_text("an earlier export")
    assert main(["export", "-o", str(out), "--weights", str(weights)]) == 2
    assert capsys.readouterr().err.strip() == f"lkcfusion: error: {out}: output exists; pass --overwrite " \
                                              "(overwrite=True) to replace it"
    assert out.read_text() == "an earlier export"
    assert main(["export", "-o", str(out), "--weights", str(weights), "--overwrite"]) == 0
    assert torch.jit.load(str(out))(torch.rand(1, 2, 16, 16)).shape == (1, 1, 16, 16)
