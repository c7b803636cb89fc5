"""3D Slicer scripted module: fuse an MRI volume with a CT/PET/SPECT volume using LKC-FUNet (monai-lkcfusion).

The panel picks the two scalar volume nodes, optional weights and a device; Run adds a NEW scalar volume node on
the MRI's grid. The computation lives in ``LKCFusionLib.logic`` (plain Python, tested without Slicer); this file
only moves data between MRML nodes and numpy.
"""

from __future__ import annotations

import logging

import ctk
import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

PACKAGE = "monai-lkcfusion"


class LKCFusion(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LKC-FUNet Fusion"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["monai-lkcfusion developers"]
        self.parent.helpText = (
            "Fuses a co-registered anatomical MRI with a CT, PET or SPECT volume into one image (LKC-FUNet, "
            "He et al., Pattern Recognition 2026). The other volume is resampled onto the MRI grid (parent "
            "linear transforms are applied); the result is a new scalar volume on the MRI grid, values in [0, 1]. "
            "Needs the Python package 'monai-lkcfusion' (the module offers to install it)."
        )
        self.parent.acknowledgementText = (
            "LKC-FUNet by He et al. (arXiv 2411.10036); MONAI integration by the monai-lkcfusion developers."
        )


def ensure_package() -> bool:
    """Import ``monai_lkcfusion``, offering ``slicer.util.pip_install`` when it is missing; True when usable."""
    try:
        import monai_lkcfusion  # noqa: F401
    except ImportError:
        if not slicer.util.confirmOkCancelDisplay(
            f"LKC-FUNet Fusion needs the Python package '{PACKAGE}' (with PyTorch and MONAI). Install it now? "
            "This can take several minutes."
        ):
            return False
        slicer.util.pip_install(PACKAGE)
        import monai_lkcfusion  # noqa: F401
    return True


class LKCFusionWidget(ScriptedLoadableModuleWidget):
    """Panel: MRI volume, other volume, optional weights, device, Run."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = LKCFusionLogic()

        inputs = ctk.ctkCollapsibleButton()
        inputs.text = "Fusion"
        self.layout.addWidget(inputs)
        form = qt.QFormLayout(inputs)

        self.mriSelector = self._volumeSelector("Anatomical MRI (reference grid of the result)")
        form.addRow("MRI volume:", self.mriSelector)
        self.otherSelector = self._volumeSelector("CT, PET or SPECT volume, co-registered with the MRI")
        form.addRow("CT / PET / SPECT volume:", self.otherSelector)

        self.weightsEdit = ctk.ctkPathLineEdit()
        self.weightsEdit.filters = ctk.ctkPathLineEdit.Files
        self.weightsEdit.nameFilters = ["Weights (*.pt *.pth *.safetensors)"]
        self.weightsEdit.toolTip = "Optional LKC-FUNet weights; empty uses the package's default model"
        form.addRow("Weights (optional):", self.weightsEdit)

        self.methodCombo = qt.QComboBox()
        self.methodCombo.addItems(["lkcfunet", "max", "mean", "dwt", "laplacian"])
        self.methodCombo.toolTip = "lkcfunet: the network; the others are classical baselines for comparison"
        form.addRow("Method:", self.methodCombo)

        self.deviceCombo = qt.QComboBox()
        self.deviceCombo.addItems(["auto", "cpu", "cuda"])
        self.deviceCombo.toolTip = "auto: CUDA when available, else CPU"
        form.addRow("Device:", self.deviceCombo)

        self.runButton = qt.QPushButton("Run")
        self.runButton.toolTip = "Fuse the two volumes into a new volume"
        form.addRow(self.runButton)
        self.statusLabel = qt.QLabel("")
        form.addRow(self.statusLabel)

        self.runButton.connect("clicked(bool)", self.onRun)
        self.mriSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateRunButton)
        self.otherSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateRunButton)
        self.layout.addStretch(1)
        self.updateRunButton()

    @staticmethod
    def _volumeSelector(tooltip: str):
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        selector.showChildNodeTypes = False  # no label maps
        selector.addEnabled = False
        selector.removeEnabled = False
        selector.noneEnabled = True
        selector.setMRMLScene(slicer.mrmlScene)
        selector.toolTip = tooltip
        return selector

    def updateRunButton(self, *_):
        mri, other = self.mriSelector.currentNode(), self.otherSelector.currentNode()
        self.runButton.enabled = bool(mri and other and mri != other)

    def onRun(self):
        if not ensure_package():
            return
        device = self.deviceCombo.currentText
        with slicer.util.tryWithErrorDisplay("LKC-FUNet fusion failed.", waitCursor=True):
            output = self.logic.process(
                self.mriSelector.currentNode(),
                self.otherSelector.currentNode(),
                weights=self.weightsEdit.currentPath or None,
                device=None if device == "auto" else device,
                method=self.methodCombo.currentText,
            )
            slicer.util.setSliceViewerLayers(background=output, fit=True)
            self.statusLabel.text = f"Created '{output.GetName()}'"


def ijk_to_world(volumeNode) -> np.ndarray:
    """The node's IJK-to-RAS matrix including its parent transform (which must be linear), as a numpy 4x4."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return ijk_to_ras
    if not parent.IsTransformToWorldLinear():
        raise ValueError(f"{volumeNode.GetName()}: its transform is not linear; harden it first (Data module)")
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return slicer.util.arrayFromVTKMatrix(to_world) @ ijk_to_ras


class LKCFusionLogic(ScriptedLoadableModuleLogic):
    """Fuses two volume nodes into a new scalar volume node on the first one's grid."""

    def process(self, mriNode, otherNode, weights=None, device=None, method="lkcfunet", outputName=None):
        """Run the fusion.

        Args:
            mriNode: vtkMRMLScalarVolumeNode with the MRI.
            otherNode: vtkMRMLScalarVolumeNode with the CT/PET/SPECT (any grid; resampled onto the MRI's).
            weights: optional weights file; None uses the package default.
            device: "cpu", "cuda" or None (CUDA when available).
            method: "lkcfunet" or a baseline ("max", "mean", "dwt", "laplacian").
            outputName: name of the new node (default: "<MRI name> fused").

        Returns:
            The new vtkMRMLScalarVolumeNode (float, values in [0, 1]).
        """
        from LKCFusionLib import fuse_volume_arrays

        if mriNode is None or otherNode is None:
            raise ValueError("select both an MRI volume and a CT/PET/SPECT volume")
        mri_to_world = ijk_to_world(mriNode)
        fused = fuse_volume_arrays(
            slicer.util.arrayFromVolume(mriNode),
            mri_to_world,
            slicer.util.arrayFromVolume(otherNode),
            ijk_to_world(otherNode),
            weights=weights,
            device=device,
            method=method,
        )
        name = outputName or slicer.mrmlScene.GenerateUniqueName(f"{mriNode.GetName()} fused {method}")
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        output.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(mri_to_world))
        slicer.util.updateVolumeFromArray(output, fused)
        output.CreateDefaultDisplayNodes()
        logging.info(f"LKCFusion: created {name} {fused.shape}")
        return output


class LKCFusionTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test): fuses two synthetic volumes on different grids."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_fuse_creates_scalar_volume_on_mri_grid()

    def test_fuse_creates_scalar_volume_on_mri_grid(self):
        self.delayDisplay("Fusing two synthetic volumes")
        k, j, i = np.mgrid[0:12, 0:40, 0:36].astype(np.float32)
        mri = 100 * np.sin(i / 4) * np.cos(j / 5) + 100
        other = 1000.0 * (np.hypot(i - 18, j - 20) < 9)
        mriToRas = np.diag([0.8, 0.8, 3.0, 1.0])
        otherToRas = np.diag([1.6, 1.6, 3.0, 1.0])  # half the in-plane resolution
        mriNode = slicer.util.addVolumeFromArray(mri, ijkToRAS=mriToRas, name="MRI")
        otherNode = slicer.util.addVolumeFromArray(other[:, ::2, ::2].copy(), ijkToRAS=otherToRas, name="CT")

        from monai_lkcfusion.networks import default_weights_path

        method = "lkcfunet" if default_weights_path().is_file() else "max"  # a pip install may lack the bundle
        output = LKCFusionLogic().process(mriNode, otherNode, device="cpu", method=method)

        self.assertEqual(output.GetClassName(), "vtkMRMLScalarVolumeNode")
        fused = slicer.util.arrayFromVolume(output)
        self.assertEqual(fused.shape, mri.shape)
        self.assertTrue(np.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1)
        np.testing.assert_allclose(ijk_to_world(output), mriToRas)
        self.delayDisplay("Test passed")
