"""The 3D Slicer module without Slicer: its logic driven as Slicer would, on real volumes, against ``lkcfusion fuse``.

Only what cannot run here is stubbed: the ``slicer``/``qt`` modules, MRML volume nodes (voxels in Slicer's (K, J, I)
order + IJK-to-RAS) and Slicer's ITK-based volume file I/O (NRRD/NIfTI through SimpleITK with the LPS <-> RAS
conversion Slicer makes). The background process, the worker and the fusion are the real ones.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
import types
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from monai_lkcfusion.cli import main
from monai_lkcfusion.data import demo_files
from monai_lkcfusion.inferers import worker_policy
from monai_lkcfusion.networks import PLAN_CACHE, LKCFUNet, save_network

MODULE = Path(__file__).resolve().parents[1] / "slicer" / "LKCFusion"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeNode:
    """A stand-in for vtkMRMLScalarVolumeNode / vtkMRMLVectorVolumeNode: voxels (K, J, I[, C]) and IJK-to-RAS."""

    def __init__(self, name: str, voxels: np.ndarray, ijk_to_ras: np.ndarray) -> None:
        self.name, self.voxels, self.ijk_to_ras = name, voxels, np.asarray(ijk_to_ras, dtype=np.float64)

    def GetName(self) -> str:
        return self.name

    def SetName(self, name: str) -> None:
        self.name = name

    def GetParentTransformNode(self) -> None:
        return None

    def GetStorageNode(self) -> None:
        return None

    def IsA(self, class_name: str) -> bool:
        return class_name == self.GetClassName()

    def GetClassName(self) -> str:
        return "vtkMRMLVectorVolumeNode" if self.voxels.ndim == 4 else "vtkMRMLScalarVolumeNode"


def _read_volume(path: str, name: str) -> VolumeNode:
    """What Slicer's volume reader makes of a file (ITK reads it in LPS; Slicer's IJK-to-RAS)."""
    image = sitk.ReadImage(path)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return VolumeNode(name, sitk.GetArrayFromImage(image), LPS @ ijk_to_lps)


class StorageNode:
    """A stand-in for vtkMRMLVolumeArchetypeStorageNode: writes a node as Slicer does (ITK, LPS)."""

    def SetFileName(self, path: str) -> None:
        self.path = path

    def UseCompressionOff(self) -> None:
        pass

    def WriteData(self, node: VolumeNode) -> bool:
        ijk_to_lps = LPS @ node.ijk_to_ras
        spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
        image = sitk.GetImageFromArray(node.voxels, isVector=node.voxels.ndim == 4)
        image.SetSpacing(spacing.tolist())
        image.SetDirection((ijk_to_lps[:3, :3] / spacing).flatten().tolist())
        image.SetOrigin(ijk_to_lps[:3, 3].tolist())
        sitk.WriteImage(image, self.path)
        return True


@pytest.fixture(scope="module")
def slicer_module(tmp_path_factory):
    """``LKCFusion.py`` imported with stand-ins for ``slicer`` and ``qt`` (restored afterwards)."""
    temp = tmp_path_factory.mktemp("slicer_temp")
    counter = iter(range(10_000))

    def temp_directory() -> str:  # slicer.util.tempDirectory: a new folder per call
        folder = temp / f"t{next(counter)}"
        folder.mkdir()
        return str(folder)

    scene = types.SimpleNamespace(
        AddNewNodeByClass=lambda cls, name=None: StorageNode(),
        RemoveNode=lambda node: None,
        GenerateUniqueName=lambda name: name,
    )
    util = types.SimpleNamespace(
        tempDirectory=temp_directory,
        loadVolume=lambda path, properties=None: _read_volume(path, (properties or {}).get("name", Path(path).name)),
    )
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget",
                 "ScriptedLoadableModuleTest"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, *a: None}))
    slicer = types.ModuleType("slicer")
    slicer.util, slicer.mrmlScene, slicer.ScriptedLoadableModule = util, scene, scripted
    slicer.app = types.SimpleNamespace(processEvents=lambda: None)
    saved = {name: sys.modules.get(name) for name in ("slicer", "slicer.ScriptedLoadableModule", "qt", "LKCFusion")}
    sys.modules.update({"slicer": slicer, "slicer.ScriptedLoadableModule": scripted, "qt": types.ModuleType("qt")})
    sys.path.insert(0, str(MODULE))
    sys.modules.pop("LKCFusion", None)
    try:
        yield importlib.import_module("LKCFusion")
    finally:
        sys.path.remove(str(MODULE))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_network(LKCFUNet.from_preset("tiny"), tmp_path_factory.mktemp("w") / "tiny.pt")


@pytest.fixture(scope="module")
def logic(slicer_module):
    logic = slicer_module.LKCFusionLogic()
    yield logic
    logic.cancel()
    logic.closeProcess()


@pytest.mark.slow
def test_module_fuses_demo_volumes_in_background_like_lkcfusion_fuse(slicer_module, logic, tiny_weights, tmp_path):
    """Volume nodes as Slicer loads the demo files -> background job -> new node == ``lkcfusion fuse`` output."""
    files = demo_files()
    # this process has read the plan cache before the worker measures (as after other tests): the in-process CLI
    # below must still run the worker's measured memory format (with random weights, another one's rounding is
    # amplified to several percent by the norm layers)
    PLAN_CACHE.get("loaded before the worker runs")
    mri_node = _read_volume(str(files["mri_3d"]), "T1")
    pet_node = _read_volume(str(files["pet_3d"]), "PET")
    progress: list[tuple[int, int]] = []
    task = logic.startFusion(mri_node, pet_node, weights=str(tiny_weights), device="cpu",
                             onProgress=lambda t: progress.append((t.done, t.total)))
    assert task.outputNode is None and not task.finished  # returned at once: the GUI thread is free
    deadline = time.time() + 600
    while logic.checkFusion():  # what the widget's QTimer does
        assert time.time() < deadline, logic.fusionProcess.log()
        time.sleep(0.05)
    assert not task.error, task.error
    output = task.outputNode
    assert output.GetName() == "T1 fused lkcfunet" and output.GetClassName() == "vtkMRMLScalarVolumeNode"
    # 72 axial slices, 8 per network call; on a CPU with several cores the slice workers take one slice per call
    step = 1 if worker_policy(None, None, torch.device("cpu"))[0] > 1 else 8
    assert progress == [(min(done, 72), 72) for done in range(step, 72 + step, step)]
    assert not Path(task.tempDir).exists()  # temporary files removed

    reference = tmp_path / "cli.nii.gz"
    assert main(["fuse", str(files["mri_3d"]), str(files["pet_3d"]), "-o", str(reference), "--weights",
                 str(tiny_weights), "--device", "cpu"]) == 0
    cli = nib.load(reference)
    np.testing.assert_array_equal(output.voxels, cli.get_fdata(dtype=np.float32).transpose(2, 1, 0))
    np.testing.assert_allclose(output.ijk_to_ras, cli.affine, atol=1e-5)
    np.testing.assert_allclose(output.ijk_to_ras, mri_node.ijk_to_ras, atol=1e-5)
    assert task.result["predictor_reused"] is False

    # the next run keeps the process and its loaded network
    pid = logic.fusionProcess.pid
    again = logic.process(mri_node, pet_node, weights=str(tiny_weights), device="cpu")
    assert logic.fusionProcess.pid == pid and logic.task.result["predictor_reused"] is True
    np.testing.assert_array_equal(again.voxels, output.voxels)


def test_module_reports_errors_and_keeps_the_process(logic):
    mri = VolumeNode("MRI", np.full((4, 16, 16), 50, np.float32), np.eye(4))
    far = VolumeNode("PET", np.ones((4, 16, 16), np.float32), np.eye(4))
    far.ijk_to_ras[:3, 3] = 500.0  # no overlap with the MRI
    with pytest.raises(RuntimeError, match="overlap") as refused:
        logic.process(mri, far, method="max", device="cpu")
    assert logic.fusionProcess is not None and logic.fusionProcess.running
    # the volumes by their names, not the temporary files the module wrote (hand-check helper)
    assert "'PET'" in str(refused.value) and ".nrrd" not in str(refused.value), refused.value
    part = VolumeNode("PET", np.ones((4, 16, 16), np.float32), np.eye(4))
    part.ijk_to_ras[0, 3] = 8.0  # half of it outside the MRI: warned
    logic.process(mri, part, method="max", device="cpu")
    warned = " ".join(logic.task.warnings)
    assert "'PET'" in warned and "'MRI'" in warned and ".nrrd" not in warned, warned


def test_module_colour_pet_gives_vector_volume(logic):
    _, j, i = np.mgrid[0:3, 0:20, 0:24].astype(np.float32)
    mri = VolumeNode("MRI", (100 + 50 * np.sin(i / 3)).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    rgb = np.stack([np.clip(i * 10, 0, 255), np.clip(j * 10, 0, 255), np.full_like(i, 30)], -1).astype(np.uint8)
    pet = VolumeNode("PET colour", rgb, np.diag([1.0, 1.0, 2.0, 1.0]))
    output = logic.process(mri, pet, method="max", device="cpu")
    assert output.GetClassName() == "vtkMRMLVectorVolumeNode" and output.voxels.shape == (3, 20, 24, 3)
    gray = logic.process(mri, pet, method="max", device="cpu", color=False)
    assert gray.voxels.shape == (3, 20, 24)


@pytest.mark.slow
def test_cancel_ends_the_process_and_the_next_run_starts_a_new_one(slicer_module):
    logic = slicer_module.LKCFusionLogic()
    files = demo_files()
    mri_node, pet_node = _read_volume(str(files["mri_3d"]), "T1"), _read_volume(str(files["pet_3d"]), "PET")
    finished = []
    try:
        task = logic.startFusion(mri_node, pet_node, device="cpu", onFinished=finished.append)  # ~20 s
        process = logic.fusionProcess
        deadline = time.time() + 300
        while task.done == 0 and logic.checkFusion():  # cancel once the fusion is under way
            assert time.time() < deadline
            time.sleep(0.02)
        logic.cancel()
        assert task.cancelled and task.finished and finished == [task] and task.outputNode is None
        assert not process.running and logic.fusionProcess is None
        small = VolumeNode("MRI", np.full((2, 8, 8), 50, np.float32), np.eye(4))
        assert logic.process(small, small.__class__("CT", np.ones((2, 8, 8), np.float32), np.eye(4)),
                             method="max", device="cpu").voxels.shape == (2, 8, 8)
        assert logic.fusionProcess.pid != process.pid
    finally:
        logic.closeProcess()


@pytest.mark.skipif(sys.platform != "linux", reason="a bash launcher and /proc")
def test_cancel_ends_the_worker_that_a_launcher_started(tmp_path, process_ends):
    """In Slicer the worker's interpreter is PythonSlicer, a launcher that runs Python as its child: Cancel killed
    the launcher only, and the worker went on (then waited on its input for good; hand-check helper). The whole
    process tree ends now."""
    sys.path.insert(0, str(MODULE))
    try:
        from LKCFusionLib.process import FusionProcess
    finally:
        sys.path.remove(str(MODULE))
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(f"#!/bin/bash\n{sys.executable} \"$@\"\nexit $?\n")  # a child, not exec
    launcher.chmod(0o755)
    process = FusionProcess(str(launcher))
    process.start()
    deadline = time.time() + 60
    children: list[str] = []
    while not children and time.time() < deadline:  # the interpreter the launcher started
        time.sleep(0.1)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert children, "the launcher started no interpreter"
    worker = int(children[0])
    process.cancel()

    assert process_ends(worker) and not process.running


def test_a_refused_volume_leaves_no_temporary_folder(slicer_module):
    """A CT under a non-linear transform is refused (one line), but the MRI had been written to the run's temporary
    folder first and stayed there (about 300 MB for a 512 x 512 x 300 float volume; hand-check helper)."""
    logic = slicer_module.LKCFusionLogic()
    mri = VolumeNode("MRI", np.full((2, 8, 8), 50, np.float32), np.eye(4))
    ct = VolumeNode("CT", np.ones((2, 8, 8), np.float32), np.eye(4))
    ct.GetParentTransformNode = lambda: types.SimpleNamespace(IsTransformToWorldLinear=lambda: False)
    temp = Path(slicer_module.slicer.util.tempDirectory()).parent
    before = set(temp.iterdir())
    with pytest.raises(ValueError, match="CT: its transform is not linear; harden it first"):
        logic.startFusion(mri, ct, device="cpu")
    assert set(temp.iterdir()) == before  # the run's folder (with mri.nrrd) is gone


def test_ui_file_has_the_widgets_the_module_uses():
    root = ET.parse(MODULE / "Resources" / "UI" / "LKCFusion.ui").getroot()
    names = {w.get("name") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "LKCFusion.py").read_text()))
    assert used and used <= names, used - names
    cmake = (MODULE / "CMakeLists.txt").read_text()
    assert "Resources/UI/${MODULE_NAME}.ui" in cmake and "add_subdirectory(Testing)" in cmake
    for script in ("dependencies.py", "process.py"):
        assert f"${{MODULE_NAME}}Lib/{script}" in cmake
    extension = (MODULE.parent / "CMakeLists.txt").read_text()
    assert 'EXTENSION_ICONURL ""' not in extension and 'EXTENSION_SCREENSHOTURLS ""' not in extension
    assert (MODULE / "Resources" / "Icons" / "LKCFusion.png").is_file()


def test_install_plan_keeps_slicer_packages(tmp_path):
    sys.path.insert(0, str(MODULE))
    try:
        from LKCFusionLib.dependencies import install_plan
    finally:
        sys.path.remove(str(MODULE))
    wheel = tmp_path / "monai_lkcfusion-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("monai_lkcfusion-0.1.0.dist-info/METADATA", "Name: monai-lkcfusion\nVersion: 0.1.0\n"
                         "Requires-Dist: torch>=2.4\nRequires-Dist: monai==1.6.1\nRequires-Dist: numpy>=1.24\n"
                         "Requires-Dist: onnx>=1.16; extra == \"export\"\n")
    installed = {"numpy": "1.26.4", "torch": "2.5.1+cu121", "monai": "1.4.0", "SimpleITK": "2.4.0",
                 "monai-lkcfusion": "0.0.9"}
    plan = install_plan(wheel, tmp_path / "c.txt", installed)
    assert plan.dependencies == ["-c", str(tmp_path / "c.txt"), "monai>=1.6.1", "numpy>=1.24"]  # torch: extension
    assert plan.package == ["-c", str(tmp_path / "c.txt"), "--no-deps", "--upgrade", str(wheel)]
    lines = plan.constraints.split()
    assert "numpy==1.26.4" in lines and "simpleitk==2.4.0" in lines  # Slicer's own: unchanged
    assert "torch>=2.5.1" in lines and "monai>=1.4.0" in lines  # others: never downgraded
    assert not [line for line in lines if line.startswith("monai-lkcfusion")]
    offline = install_plan(tmp_path, tmp_path / "c.txt", installed, offline=True)  # a folder of wheels
    assert offline.dependencies[2:5] == ["--no-index", "--find-links", str(tmp_path)]
    assert offline.package[-1] == str(wheel)
    checkout = install_plan(Path(__file__).resolve().parents[1], tmp_path / "c.txt", installed)
    assert not [r for r in checkout.dependencies if r.startswith("torch") or "==" in r]


@pytest.mark.slow
def test_module_registers_like_lkcfusion_fuse_register(logic, tmp_path):
    """Registration option of the panel = ``lkcfusion fuse --register rigid`` on the same volumes."""
    import inspect

    from monai_lkcfusion.inference import fuse

    if "register" not in inspect.signature(fuse).parameters:
        pytest.skip("fuse() has no registration in this checkout")
    files = demo_files()
    mri_node, pet_node = _read_volume(str(files["mri_3d"]), "T1"), _read_volume(str(files["pet_3d"]), "PET")
    pet_node.ijk_to_ras[:3, 3] += [4.0, -3.0, 2.0]  # the PET's header is off by a few mm
    moved = tmp_path / "pet_moved.nrrd"
    writer = StorageNode()  # the file the user would fuse on the command line: the PET as Slicer would save it
    writer.SetFileName(str(moved))
    writer.WriteData(pet_node)
    output = logic.process(mri_node, pet_node, method="max", device="cpu", register="rigid")
    reference = tmp_path / "cli.nii.gz"
    assert main(["fuse", str(files["mri_3d"]), str(moved), "-o", str(reference), "--method", "max",
                 "--register", "rigid", "--device", "cpu"]) == 0
    cli = nib.load(reference).get_fdata(dtype=np.float32).transpose(2, 1, 0)
    # ITK's multi-threaded registration is not bit-reproducible (two identical fuse() calls differed by up to 0.02
    # here), so the module is compared with the command line on the mean, and the registration must have helped
    assert np.abs(output.voxels - cli).mean() < 1e-3
    placed = _read_volume(str(files["pet_3d"]), "PET")
    truth = logic.process(mri_node, placed, method="max", device="cpu").voxels
    unregistered = logic.process(mri_node, pet_node, method="max", device="cpu").voxels
    assert np.abs(output.voxels - truth).mean() < 0.5 * np.abs(unregistered - truth).mean()


def test_install_uses_the_pytorch_extension_and_constrained_pip(slicer_module, monkeypatch, tmp_path):
    """Install / update: torch from the PyTorch extension (never pip), then two pip calls with the constraints."""
    from importlib import metadata

    logic = slicer_module.LKCFusionLogic()
    real_version = metadata.version
    calls: list[list[str]] = []
    monkeypatch.setattr(sys.modules["slicer"].util, "pip_install", calls.append, raising=False)

    monkeypatch.setattr(metadata, "version", lambda name: "2.1.0" if name == "torch" else real_version(name))
    with pytest.raises(RuntimeError, match="too old"):
        logic.installDependencies(str(MODULE.parents[1]))
    assert not calls

    def no_torch(name: str) -> str:
        if name == "torch":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", no_torch)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # extension not installed
    with pytest.raises(RuntimeError, match="'PyTorch' extension"):
        logic.installDependencies(str(MODULE.parents[1]))
    requested = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation, torchVersionRequirement):
            requested.append(torchVersionRequirement)
            return types.SimpleNamespace(__version__="2.5.1+cu121")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    logic.installDependencies(str(MODULE.parents[1]))
    assert requested == [">=2.4"] and len(calls) == 2
    constraints = Path(calls[0][1]).read_text().split()
    assert calls[0][0] == "-c" and calls[1][:2] == calls[0][:2] and "numpy==" + real_version("numpy") in constraints
    assert not [a for a in calls[0] if a.startswith("torch") or "==" in a] and "--no-deps" in calls[1]
