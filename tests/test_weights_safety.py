"""Weights files are data, never code: pickles that carry code are refused without running it, and weights for
another architecture or preset get a message naming the mismatch (command line and Python API)."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_lkcfusion.cli import main
from monai_lkcfusion.errors import FusionInputError
from monai_lkcfusion.networks import LKCFUNet, load_network, load_official_checkpoint, save_network

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: the marker file exists only if the pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _malicious_files(folder: Path) -> dict[str, Path]:
    """Weights files whose loading with full unpickling would create ``folder/pwned_<name>``."""
    tiny = LKCFUNet.from_preset("tiny").state_dict()
    files = {}
    files["torch zip"] = folder / "evil.pt"
    torch.save(_Payload(folder / "pwned_zip"), files["torch zip"])
    files["wrapped in a real state dict"] = folder / "wrapped.pth"
    torch.save({"state_dict": tiny, "extra": _Payload(folder / "pwned_wrapped")}, files["wrapped in a real state dict"])
    files["legacy pickle"] = folder / "legacy.pth"
    with open(files["legacy pickle"], "wb") as f:
        pickle.dump(_Payload(folder / "pwned_legacy"), f)
    return files


def _pair(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for name in ("mri.png", "ct.png"):
        Image.fromarray((rng.random((24, 20)) * 255).astype(np.uint8)).save(folder / name)
    return folder / "mri.png", folder / "ct.png"


def test_pickle_with_code_is_refused_and_never_run(tmp_path, capsys):
    mri, ct = _pair(tmp_path)
    for name, weights in _malicious_files(tmp_path).items():
        out = tmp_path / f"fused_{weights.stem}.png"
        assert main(["fuse", str(mri), str(ct), "-o", str(out), "--weights", str(weights), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"{weights}: cannot read weights" in err, (name, err)
        assert "never unpickled" in err, (name, err)
        with pytest.raises(FusionInputError, match="cannot read weights"):
            load_network(weights)
        with pytest.raises(FusionInputError, match="cannot read weights"):
            load_official_checkpoint(weights)
        assert not out.exists()
    assert not list(tmp_path.glob("pwned_*")), "a weights file ran code"


def test_training_checkpoint_loaders_refuse_code(tmp_path):
    from monai_lkcfusion.engines import export_weights

    for weights in _malicious_files(tmp_path).values():
        with pytest.raises(Exception):
            export_weights(weights, tmp_path / "model.pt")
    assert not list(tmp_path.glob("pwned_*")) and not (tmp_path / "model.pt").exists()


def test_malicious_weights_through_the_installed_command(tmp_path):
    mri, ct = _pair(tmp_path)
    weights = _malicious_files(tmp_path)["legacy pickle"]  # protocol 4: torch would also warn on stderr
    exe = REPO / ".venv" / "bin" / "lkcfusion"
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "monai_lkcfusion"]
    result = subprocess.run([*command, "fuse", str(mri), str(ct), "-o", str(tmp_path / "f.png"), "--weights",
                             str(weights), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "legacy.pth: cannot read weights" in result.stderr
    assert not list(tmp_path.glob("pwned_*")) and not (tmp_path / "f.png").exists()


def test_corrupt_and_empty_weights(tmp_path, capsys):
    mri, ct = _pair(tmp_path)
    good = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    pt = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    cut_pt = tmp_path / "cut.pt"
    cut_pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.pt"  # not a zip and not a pickle: corrupt, not "Python objects"
    junk.write_bytes(b"garbage, not weights")
    for weights, problem in ((cut, "cannot read weights"), (cut_pt, "cannot read weights"),
                             (empty, "an empty file (neither a torch.save archive nor a pickle)"),
                             (junk, "not a PyTorch weights file (neither"),  # "KeyError: 101" for a text file
                             (tmp_path / "none.pt", "no LKC-FUNet weights file")):
        assert main(["fuse", str(mri), str(ct), "-o", str(tmp_path / "f.png"), "--weights", str(weights)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"{weights}: {problem}" in err, err
        assert "Python objects" not in err, err
    assert not (tmp_path / "f.png").exists()


def test_torchscript_export_given_as_weights_is_named(tmp_path, capsys):
    """A TorchScript export (``lkcfusion export``) as --weights got PyTorch's advice to load it unsafely; now one line
    saying what it is and what to give."""
    mri, ct = _pair(tmp_path)
    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    assert main(["export", "--weights", str(weights), "-o", str(tmp_path / "tiny.ts")]) == 0
    capsys.readouterr()
    assert main(["fuse", str(mri), str(ct), "-o", str(tmp_path / "f.png"), "--weights", str(tmp_path / "tiny.ts")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"lkcfusion: error: {tmp_path / 'tiny.ts'}: is a TorchScript model (e.g. from "
                                        "lkcfusion export); give the .pt/.pth state dict or .safetensors weights it "
                                        "was made from"], err
    assert not (tmp_path / "f.png").exists()


def test_other_architecture_is_named(tmp_path, capsys):
    from monai.networks.nets import BasicUNet

    mri, ct = _pair(tmp_path)
    unet = tmp_path / "unet.pt"
    torch.save(BasicUNet(spatial_dims=2, in_channels=2, out_channels=1, features=(4, 4, 4, 4, 4, 4)).state_dict(), unet)
    assert main(["fuse", str(mri), str(ct), "-o", str(tmp_path / "f.png"), "--weights", str(unet)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unet.pt: not an LKC-FUNet state dict" in err, err
    with pytest.raises(FusionInputError, match="not an LKC-FUNet state dict"):
        load_network(unet)


def test_other_preset_is_named(tmp_path, capsys):
    tiny = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    with pytest.raises(FusionInputError, match=r"tiny.pt: weights are for width \(features\) 4, preset 'small' has"):
        load_network(tiny, expected="small")
    with pytest.raises(FusionInputError, match="kernel sizes"):
        load_network(tiny, expected={"kernel_sizes": (7, 3)})
    assert main(["export", "--weights", str(tiny), "--preset", "small", "-o", str(tmp_path / "m.ts")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "preset 'small'" in err and not (tmp_path / "m.ts").exists()


def test_tampered_state_dict_is_named(tmp_path, capsys):
    mri, ct = _pair(tmp_path)
    state = LKCFUNet.from_preset("tiny").state_dict()
    missing = {k: v for k, v in state.items() if k != "head.2.bias"}
    reshaped = {**state, "middle.0.dw.weight": torch.zeros(1)}
    for name, tampered, problem in (("missing", missing, "missing keys"),
                                    ("reshaped", reshaped, "tensor shapes do not fit")):
        path = tmp_path / f"{name}.pt"
        torch.save(tampered, path)
        assert main(["fuse", str(mri), str(ct), "-o", str(tmp_path / "f.png"), "--weights", str(path)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"{path}:" in err and problem in err, err


def test_every_torch_load_in_the_code_is_weights_only():
    """Static guard: no ``torch.load`` without ``weights_only=True``, no ``pickle.load``, no ``allow_pickle=True``."""
    offenders = []
    for path in [*(REPO / "monai_lkcfusion").rglob("*.py"), *(REPO / "slicer").rglob("*.py"),
                 *(REPO / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("torch.load") and keywords.get("weights_only") != "True":
                offenders.append(f"{path}:{node.lineno} {name} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "dill.load") or keywords.get("allow_pickle") == "True":
                offenders.append(f"{path}:{node.lineno} {name}")
    assert not offenders, offenders


def test_cuda_map_location_on_a_cpu_machine_is_named(tmp_path):
    """``python -m monai_lkcfusion.run_bundle run ... --device cuda`` without CUDA gave torch's deserialisation text
    about map_location; now the message the other commands give."""
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    weights = save_network(LKCFUNet.from_preset("tiny"), tmp_path / "tiny.pt")
    with pytest.raises(FusionInputError, match=r"^device cuda: CUDA is not available on this machine; use cpu"):
        load_network(weights, map_location="cuda")
