"""3D Slicer scripted module: fuse an MRI volume with a CT/PET/SPECT volume using LKC-FUNet (monai-lkcfusion).

Fusion runs in a background process (``python -m monai_lkcfusion.apps.worker``, started with Slicer's Python),
never on the GUI thread: the logic writes the two volume nodes to NRRD files, sends the job, reads progress lines
from a ``qt.QTimer`` and loads the fused file as a new volume node. The process keeps its loaded network between
runs; Cancel ends it. Fusion itself is the package's one pipeline (the same call as ``lkcfusion fuse``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from LKCFusionLib.dependencies import MINIMUM_TORCH, PACKAGE, install_plan
from LKCFusionLib.process import FusionProcess

PET_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"


class LKCFusion(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LKC-FUNet Fusion"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["monai-lkcfusion developers"]
        self.parent.helpText = (
            "Fuses an anatomical MRI with a CT, PET or SPECT volume into one image (LKC-FUNet, He et al., Pattern "
            "Recognition 2026). The other volume is resampled onto the MRI grid (a parent linear transform is "
            "applied); the result is a new volume on the MRI grid, values in [0, 1] (a colour vector volume for an "
            "RGB PET/SPECT). Fusion runs in a background process with progress and Cancel. Needs PyTorch (the "
            "PyTorch extension) and the Python package 'monai-lkcfusion' (section 'Python packages')."
        )
        self.parent.acknowledgementText = (
            "LKC-FUNet by He et al. (arXiv 2411.10036); MONAI integration by the monai-lkcfusion developers."
        )


@dataclass
class FusionTask:
    """One fusion run of :class:`LKCFusionLogic` (what the widget and callbacks see)."""

    jobId: str
    tempDir: str
    outputPath: str
    outputName: str
    onProgress: Callable[[FusionTask], None] | None = None
    onFinished: Callable[[FusionTask], None] | None = None
    done: int = 0
    total: int = 0
    outputNode: Any = None
    error: str = ""
    cancelled: bool = False
    finished: bool = False
    result: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    inputNames: dict = field(default_factory=dict)

    def describe(self, message: str) -> str:
        """A worker's message in the module's terms: the volumes' names for their temporary files, and no command-line
        hint the panel has no use for (the result is in the slice views)."""
        for path, name in self.inputNames.items():
            message = message.replace(path, f"'{name}'")
        return message.replace(" (--preview)", " in the slice views")


class LKCFusionLogic(ScriptedLoadableModuleLogic):
    """Fuses two volume nodes into a new volume node on the first one's grid, in a background process.

    The process (:class:`LKCFusionLib.process.FusionProcess`) is started on the first run and kept, so the network is
    loaded once; :meth:`cancel` ends it and the next run starts a new one.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.fusionProcess: FusionProcess | None = None
        self.task: FusionTask | None = None

    # -- dependencies -------------------------------------------------------------------------------------------

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python interpreter (``PythonSlicer``), for the background process and pip."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def packageInstalled() -> bool:
        """Whether ``monai_lkcfusion`` can be imported by Slicer's Python (checked without importing it)."""
        import importlib
        import importlib.util

        importlib.invalidate_caches()
        return importlib.util.find_spec("monai_lkcfusion") is not None

    @staticmethod
    def ensureTorch(askConfirmation: bool = True) -> str:
        """Make sure PyTorch >= MINIMUM_TORCH is installed, through the PyTorch extension when it is missing.

        Returns:
            The installed torch version.

        Raises:
            RuntimeError: torch older than MINIMUM_TORCH, no torch and no PyTorch extension, or the user declined.
        """
        from importlib import metadata

        from packaging.version import Version

        try:
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            version = None
        if version is not None:
            if Version(version.split("+")[0]) < Version(MINIMUM_TORCH):
                raise RuntimeError(
                    f"PyTorch {version} is too old; LKC-FUNet Fusion needs >= {MINIMUM_TORCH}. Update it in the "
                    f"'PyTorch Util' module (version requirement '>={MINIMUM_TORCH}'), restart Slicer."
                )
            return version
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(
                "LKC-FUNet Fusion needs PyTorch: install the 'PyTorch' extension from the Extensions Manager, "
                "restart Slicer and press 'Install / update' again."
            ) from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=askConfirmation, torchVersionRequirement=f">={MINIMUM_TORCH}"
        )
        if torch is None:
            raise RuntimeError("PyTorch was not installed; LKC-FUNet Fusion cannot run without it.")
        return torch.__version__

    def installDependencies(self, source: str, offline: bool = False, askConfirmation: bool = True) -> None:
        """Install PyTorch (PyTorch extension), then ``monai-lkcfusion`` from ``source`` with pip.

        pip runs with constraints that keep every package of Slicer's Python (no downgrades; Slicer's core
        packages unchanged) and relaxes our ``==`` pins (see ``LKCFusionLib.dependencies``).

        Args:
            source: our wheel, a folder of wheels (offline) or a source checkout.
            offline: install only from the folder of ``source`` (no package index).
            askConfirmation: let the PyTorch extension ask before downloading PyTorch.
        """
        if not source:
            raise ValueError(f"Choose the {PACKAGE} wheel, a folder of wheels or a source checkout first.")
        self.ensureTorch(askConfirmation)
        tempDir = slicer.util.tempDirectory()
        constraintsFile = os.path.join(tempDir, "constraints.txt")
        plan = install_plan(source, constraintsFile, offline=offline)
        with open(constraintsFile, "w") as f:
            f.write(plan.constraints)
        logging.info(f"LKCFusion: pip install {' '.join(plan.dependencies)}")
        slicer.util.pip_install(plan.dependencies)
        logging.info(f"LKCFusion: pip install {' '.join(plan.package)}")
        slicer.util.pip_install(plan.package)
        self.closeProcess()  # a new process imports the new package

    # -- fusion -------------------------------------------------------------------------------------------------

    def startFusion(
        self,
        mriNode,
        otherNode,
        method: str = "lkcfunet",
        weights: str | None = None,
        device: str | None = None,
        color: bool = True,
        maskBackground: bool = True,
        tta: bool = False,
        register: str = "none",
        outputName: str | None = None,
        onProgress: Callable[[FusionTask], None] | None = None,
        onFinished: Callable[[FusionTask], None] | None = None,
    ) -> FusionTask:
        """Write the two volumes to files and send the fusion job to the background process; returns at once.

        Call :meth:`checkFusion` periodically (the widget uses a ``qt.QTimer``) to receive progress and, at the
        end, the new volume node in ``task.outputNode`` (or ``task.error``).

        Args:
            mriNode: the MRI (vtkMRMLScalarVolumeNode); the result lies on its grid.
            otherNode: CT/PET/SPECT (scalar, or an RGB vtkMRMLVectorVolumeNode); any grid.
            method: ``"lkcfunet"`` or a baseline (``"max"``, ``"mean"``, ``"dwt"``, ``"laplacian"``).
            weights: weights file; ``None``: the package's model.
            device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
            color: keep an RGB PET/SPECT's colour (vector volume result).
            maskBackground: exactly 0 where both inputs are 0.
            tta: flip test-time augmentation.
            register: ``"rigid"`` or ``"affine"``: register the other volume to the MRI first (as
                ``lkcfusion fuse --register``); ``"none"``: trust the volumes' positions.
            outputName: name of the new node (default ``"<MRI> fused <method>"``).
            onProgress: called with the task after each progress line.
            onFinished: called with the task when it has finished, failed or been cancelled.

        Returns:
            The task.
        """
        if mriNode is None or otherNode is None:
            raise ValueError("Select both an MRI volume and a CT/PET/SPECT volume.")
        if mriNode == otherNode:
            raise ValueError("Select two different volumes.")
        if self.task is not None and not self.task.finished:
            raise RuntimeError("A fusion is already running; wait for it or cancel it.")
        tempDir = slicer.util.tempDirectory()
        mriPath, otherPath = os.path.join(tempDir, "mri.nrrd"), os.path.join(tempDir, "other.nrrd")
        try:
            self.writeVolume(mriNode, mriPath)
            self.writeVolume(otherNode, otherPath)
        except Exception:  # a refused volume (e.g. a non-linear transform): the MRI written first must not stay
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        if self.fusionProcess is None:
            startup = getattr(slicer.util, "startupEnvironment", None)  # the environment PythonSlicer expects
            self.fusionProcess = FusionProcess(self.pythonExecutable(), env=startup() if startup else None)
        job = {
            "mri": mriPath,
            "other": otherPath,
            "output": os.path.join(tempDir, "fused.nrrd"),
            "method": method,
            "weights": weights or None,
            "device": device or None,
            "color": bool(color),
            "mask_background": bool(maskBackground),
            "tta": bool(tta),
            "register": register,
        }
        jobId = self.fusionProcess.submit(job)
        name = outputName or slicer.mrmlScene.GenerateUniqueName(f"{mriNode.GetName()} fused {method}")
        self.task = FusionTask(jobId, tempDir, job["output"], name, onProgress, onFinished,
                               inputNames={mriPath: mriNode.GetName(), otherPath: otherNode.GetName()})
        logging.info(f"LKCFusion: job {jobId} sent to process {self.fusionProcess.pid}: {job}")
        return self.task

    def checkFusion(self) -> bool:
        """Handle the events the background process sent since the last call; never waits.

        Returns:
            True while the current task is running (call again later), False when it has ended.
        """
        task, process = self.task, self.fusionProcess
        if task is None or task.finished:
            return False
        for event in process.poll() if process is not None else [{"event": "exit", "returncode": None}]:
            kind = event.get("event")
            if event.get("id", task.jobId) != task.jobId:
                continue  # an earlier, cancelled job
            if kind == "progress":
                task.done, task.total = int(event["done"]), int(event["total"])
                if task.onProgress:
                    task.onProgress(task)
            elif kind == "warning":
                task.warnings.append(task.describe(event.get("message", "")))
                logging.warning(f"LKCFusion: {task.warnings[-1]}")
            elif kind == "done":
                task.result = event
                try:
                    task.outputNode = self.loadResult(task.outputPath, task.outputName)
                except Exception as err:  # any reader failure is shown to the user
                    task.error = f"Could not load the fused volume: {err}"
                self._finish(task)
                return False
            elif kind == "error":
                task.error = task.describe(event.get("message", "fusion failed"))
                self._finish(task)
                return False
            elif kind == "exit":
                log = process.log() if process is not None else ""
                task.error = "The fusion process ended unexpectedly." + (f"\n{log}" if log else "")
                self.fusionProcess = None
                self._finish(task)
                return False
        return True

    def cancel(self) -> None:
        """Stop the running fusion: ends the background process (the next run starts a new one)."""
        if self.fusionProcess is not None:
            self.fusionProcess.cancel()
            self.fusionProcess = None
        if self.task is not None and not self.task.finished:
            self.task.cancelled = True
            self.task.error = "Cancelled."
            self._finish(self.task)

    def closeProcess(self) -> None:
        """Let the background process quit (module cleanup, or after installing packages)."""
        if self.fusionProcess is not None:
            self.fusionProcess.close()
            self.fusionProcess = None

    def process(self, mriNode, otherNode, timeout: float = 3600.0, **kwargs):
        """Fuse and wait for the result (scripting and tests; the GUI keeps processing events meanwhile).

        Args:
            mriNode: the MRI volume node.
            otherNode: the CT/PET/SPECT volume node.
            timeout: seconds to wait before cancelling.
            kwargs: options of :meth:`startFusion`.

        Returns:
            The new volume node.

        Raises:
            RuntimeError: the fusion failed, was cancelled or timed out.
        """
        task = self.startFusion(mriNode, otherNode, **kwargs)
        deadline = time.time() + timeout
        while self.checkFusion():
            if time.time() > deadline:
                self.cancel()
                break
            slicer.app.processEvents()
            time.sleep(0.05)
        if task.error:
            raise RuntimeError(task.error)
        return task.outputNode

    def _finish(self, task: FusionTask) -> None:
        task.finished = True
        shutil.rmtree(task.tempDir, ignore_errors=True)
        if task.onFinished:
            task.onFinished(task)

    # -- MRML <-> files -----------------------------------------------------------------------------------------

    @staticmethod
    def writeVolume(node, path: str) -> None:
        """Write a volume node to NRRD as Slicer stores it, its parent linear transform applied (node unchanged)."""
        transform = node.GetParentTransformNode()
        source = node
        if transform is not None:
            if not transform.IsTransformToWorldLinear():
                raise ValueError(f"{node.GetName()}: its transform is not linear; harden it first (Data module)")
            source = slicer.modules.volumes.logic().CloneVolumeGeneric(
                slicer.mrmlScene, node, f"{node.GetName()} (world)", True
            )
            source.SetAndObserveTransformNodeID(transform.GetID())
            slicer.vtkSlicerTransformLogic().hardenTransform(source)
        storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        try:
            storage.SetFileName(path)
            storage.UseCompressionOff()
            if not storage.WriteData(source):
                raise OSError(f"{path}: could not write {node.GetName()}")
        finally:
            slicer.mrmlScene.RemoveNode(storage)
            if source is not node:
                slicer.mrmlScene.RemoveNode(source)

    @staticmethod
    def loadResult(path: str, name: str):
        """Load the fused file as a new volume node (scalar, or vector for colour) not tied to the temporary file."""
        node = slicer.util.loadVolume(path, {"name": name, "show": False, "singleFile": True})
        node.SetName(name)
        storage = node.GetStorageNode()
        if storage is not None:  # the file is temporary: "Save" must write the node somewhere else
            node.SetAndObserveStorageNodeID(None)
            slicer.mrmlScene.RemoveNode(storage)
        return node


class LKCFusionWidget(ScriptedLoadableModuleWidget):
    """Panel (Resources/UI/LKCFusion.ui): inputs, options, Fuse / Cancel with progress, Python packages."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LKCFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LKCFusionLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onTimer)

        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.mriSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.otherSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.progressBar.hide()
        self.ui.sourcePathLineEdit.currentPath = qt.QSettings().value("LKCFusion/packageSource", "")
        self.updatePackagesLabel()
        self.updateButtons()

    def cleanup(self):
        """Module closed or reloaded: stop a running fusion (without touching the panel) and end the process."""
        self.timer.stop()
        task = self.logic.task
        if task is not None and not task.finished:
            task.onProgress = task.onFinished = None
            self.logic.cancel()
        self.logic.closeProcess()

    def updateButtons(self, *_):
        running = self.logic.task is not None and not self.logic.task.finished
        mri, other = self.ui.mriSelector.currentNode(), self.ui.otherSelector.currentNode()
        self.ui.applyButton.enabled = bool(mri and other and mri != other and not running)
        self.ui.cancelButton.enabled = running
        self.ui.installButton.enabled = not running

    def updatePackagesLabel(self):
        from importlib import metadata

        versions = []
        for name in ("torch", "monai", PACKAGE):
            try:
                versions.append(f"{name} {metadata.version(name)}")
            except metadata.PackageNotFoundError:
                versions.append(f"{name}: not installed")
        self.ui.packagesLabel.text = "; ".join(versions)

    def onInstall(self):
        source = self.ui.sourcePathLineEdit.currentPath
        qt.QSettings().setValue("LKCFusion/packageSource", source)
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            self.logic.installDependencies(source, offline=self.ui.offlineCheckBox.checked)
        self.updatePackagesLabel()

    def onApply(self):
        if not self.logic.packageInstalled():
            self.ui.dependenciesCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(
                f"The Python package '{PACKAGE}' is not installed in Slicer's Python. Choose its wheel (or a "
                "folder of wheels, or a source checkout) under 'Python packages' and press 'Install / update'."
            )
            return
        device = self.ui.deviceComboBox.currentText
        with slicer.util.tryWithErrorDisplay("LKC-FUNet fusion could not start.", waitCursor=True):
            self.logic.startFusion(
                self.ui.mriSelector.currentNode(),
                self.ui.otherSelector.currentNode(),
                method=self.ui.methodComboBox.currentText,
                weights=self.ui.weightsPathLineEdit.currentPath or None,
                device=None if device == "auto" else device,
                color=self.ui.colorCheckBox.checked,
                maskBackground=self.ui.maskBackgroundCheckBox.checked,
                tta=self.ui.ttaCheckBox.checked,
                register=self.ui.registerComboBox.currentText,
                onProgress=self.onProgress,
                onFinished=self.onFinished,
            )
            self.ui.progressBar.setRange(0, 0)  # busy until the first progress line (start-up, network loading)
            self.ui.progressBar.show()
            register = self.ui.registerComboBox.currentText
            self.ui.statusLabel.text = "Starting (the first run loads the network)..." if register == "none" else (
                f"Registering the second volume to the MRI ({register}), then fusing...")
            self.timer.start()
        self.updateButtons()

    def onTimer(self):
        if not self.logic.checkFusion():
            self.timer.stop()

    def onCancel(self):
        self.logic.cancel()
        self.timer.stop()

    def onProgress(self, task: FusionTask):
        self.ui.progressBar.setRange(0, max(task.total, 1))
        self.ui.progressBar.value = task.done
        self.ui.statusLabel.text = f"Fusing: {task.done} / {task.total} slices"

    def onFinished(self, task: FusionTask):
        self.ui.progressBar.hide()
        self.updateButtons()
        if task.cancelled:
            self.ui.statusLabel.text = "Cancelled."
            return
        if task.error:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"LKC-FUNet fusion failed: {task.error}")
            return
        output, other = task.outputNode, self.ui.otherSelector.currentNode()
        if self.ui.overlayCheckBox.checked and other is not None and not other.IsA("vtkMRMLVectorVolumeNode"):
            other.GetDisplayNode().SetAndObserveColorNodeID(PET_COLOR_NODE_ID)
            slicer.util.setSliceViewerLayers(background=output, foreground=other, foregroundOpacity=0.4, fit=True)
        else:
            slicer.util.setSliceViewerLayers(background=output, foreground=None, fit=True)
        reused = " (network already loaded)" if task.result.get("predictor_reused") else ""
        self.ui.statusLabel.text = f"Created '{output.GetName()}' in {task.result.get('seconds', 0):.1f} s{reused}."


class LKCFusionTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (developer mode: Reload and Test; ctest): the logic on synthetic and demo volumes."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_fuse_creates_volume_on_mri_grid_in_background()
        self.setUp()
        self.test_demo_volumes_match_the_command_line()
        self.setUp()
        self.test_cancel_ends_the_process()

    def _syntheticNodes(self):
        import numpy as np

        _, j, i = np.mgrid[0:12, 0:40, 0:36].astype(np.float32)
        mri = 100 * np.sin(i / 4) * np.cos(j / 5) + 100
        other = 1000.0 * (np.hypot(i - 18, j - 20) < 9)
        mriToRas = np.diag([0.8, 0.8, 3.0, 1.0])
        otherToRas = np.diag([1.6, 1.6, 3.0, 1.0])  # half the in-plane resolution
        mriNode = slicer.util.addVolumeFromArray(mri, ijkToRAS=mriToRas, name="MRI")
        otherNode = slicer.util.addVolumeFromArray(other[:, ::2, ::2].copy(), ijkToRAS=otherToRas, name="CT")
        return mri, mriToRas, mriNode, otherNode

    def test_fuse_creates_volume_on_mri_grid_in_background(self):
        import numpy as np
        import vtk

        self.delayDisplay("Fusing two synthetic volumes on different grids (max, background process)")
        mri, mriToRas, mriNode, otherNode = self._syntheticNodes()
        logic = LKCFusionLogic()
        try:
            output = logic.process(mriNode, otherNode, method="max", device="cpu")
            again = logic.process(mriNode, otherNode, method="max", device="cpu")
            self.assertTrue(logic.task.result["predictor_reused"])
        finally:
            logic.closeProcess()
        self.assertEqual(output.GetClassName(), "vtkMRMLScalarVolumeNode")
        fused = slicer.util.arrayFromVolume(output)
        self.assertEqual(fused.shape, mri.shape)
        self.assertTrue(np.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1)
        np.testing.assert_array_equal(fused, slicer.util.arrayFromVolume(again))
        matrix = vtk.vtkMatrix4x4()
        output.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), mriToRas, atol=1e-5)
        self.delayDisplay("Test passed")

    def test_demo_volumes_match_the_command_line(self):
        import subprocess

        import numpy as np

        from monai_lkcfusion.data import demo_files

        self.delayDisplay("Fusing the demo volumes in the module and with 'python -m monai_lkcfusion fuse'")
        files = demo_files()
        mriNode = slicer.util.loadVolume(str(files["mri_3d"]))
        petNode = slicer.util.loadVolume(str(files["pet_3d"]))
        logic = LKCFusionLogic()
        try:
            output = logic.process(mriNode, petNode, device="cpu")
        finally:
            logic.closeProcess()
        reference = os.path.join(slicer.util.tempDirectory(), "fused.nrrd")
        subprocess.check_call([LKCFusionLogic.pythonExecutable(), "-m", "monai_lkcfusion", "fuse",
                               str(files["mri_3d"]), str(files["pet_3d"]), "-o", reference, "--device", "cpu"])
        referenceNode = slicer.util.loadVolume(reference)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(output), slicer.util.arrayFromVolume(referenceNode),
                                   atol=1e-6)
        self.delayDisplay("Test passed")

    def test_cancel_ends_the_process(self):
        self.delayDisplay("Cancelling a fusion")
        _, _, mriNode, otherNode = self._syntheticNodes()
        logic = LKCFusionLogic()
        finished = []
        task = logic.startFusion(mriNode, otherNode, method="max", device="cpu", onFinished=finished.append)
        process = logic.fusionProcess
        logic.cancel()
        self.assertTrue(task.cancelled and task.finished and finished == [task] and task.outputNode is None)
        self.assertFalse(process.running)
        self.delayDisplay("Test passed")
