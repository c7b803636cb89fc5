"""Render the module panel (``LKCFusion/Resources/UI/LKCFusion.ui``) off-screen with Qt, without 3D Slicer.

Slicer's CTK/MRML widgets are replaced by plain-Qt stand-ins of the same class name (``qMRMLNodeComboBox`` ->
a combo box showing a node name, ``ctkCollapsibleButton`` -> a titled frame that can be collapsed,
``ctkPathLineEdit`` -> a line edit with a "..." button), so the picture shows the layout the ``.ui`` defines, not
Slicer's exact look. Needs PySide6 (any virtual environment; not a dependency of the package)::

    QT_QPA_PLATFORM=offscreen python slicer/render_panel.py running.png running
    QT_QPA_PLATFORM=offscreen python slicer/render_panel.py done.png done
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import Property, QFile
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QToolButton,
    QWidget,
)

UI_FILE = Path(__file__).resolve().parent / "LKCFusion" / "Resources" / "UI" / "LKCFusion.ui"


class qMRMLWidget(QWidget):  # the class name the .ui file asks for
    """Stand-in: the panel's top-level widget."""


class qMRMLNodeComboBox(QComboBox):
    """Stand-in: a node selector."""


class ctkPathLineEdit(QWidget):
    """Stand-in: a path with a browse button."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLineEdit())
        button = QToolButton()
        button.setText("...")
        layout.addWidget(button)


class ctkCollapsibleButton(QFrame):
    """Stand-in: a section with a title button; ``collapsed`` hides its contents."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._text, self._collapsed = "", False
        self.button = QPushButton(self)
        self.button.setStyleSheet("text-align: left; padding: 3px;")
        self.setFrameShape(QFrame.StyledPanel)

    def _get_text(self) -> str:
        return self._text

    def _set_text(self, text: str) -> None:
        self._text = text
        self.refresh()

    def _get_collapsed(self) -> bool:
        return self._collapsed

    def _set_collapsed(self, collapsed: bool) -> None:
        self._collapsed = collapsed
        self.refresh()

    text = Property(str, _get_text, _set_text)
    collapsed = Property(bool, _get_collapsed, _set_collapsed)

    def refresh(self) -> None:
        """Show the arrow and title; hide the contents when collapsed."""
        self.button.setText(("\u25b6 " if self._collapsed else "\u25bc ") + self._text)
        layout = self.layout()
        if layout is None:
            return
        top = self.button.sizeHint().height() + 4
        layout.setContentsMargins(9, top, 9, 9)
        for i in range(layout.count()):
            widget = layout.itemAt(i).widget()
            if widget is not None:
                widget.setVisible(not self._collapsed)
        if self._collapsed:
            self.setFixedHeight(top + 4)
        else:
            self.setMinimumHeight(0)
            self.setMaximumHeight(16777215)

    def resizeEvent(self, event) -> None:
        self.button.setFixedWidth(self.width())
        super().resizeEvent(event)


def render(output: str, state: str) -> None:
    """Load the .ui file, fill it as in ``state`` (``"running"`` or ``"done"``) and save a PNG."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    loader = QUiLoader()
    for cls in (qMRMLWidget, qMRMLNodeComboBox, ctkPathLineEdit, ctkCollapsibleButton):
        loader.registerCustomWidget(cls)
    file = QFile(str(UI_FILE))
    file.open(QFile.ReadOnly)
    panel = loader.load(file)
    file.close()
    panel.findChild(QComboBox, "mriSelector").addItem("mri_t1")
    panel.findChild(QComboBox, "otherSelector").addItem("pet_sim")
    panel.findChild(QLabel, "packagesLabel").setText("torch 2.13.0+cpu; monai 1.6.1; monai-lkcfusion 0.1.0")
    progress = panel.findChild(QProgressBar, "progressBar")
    if state == "running":
        panel.findChild(QPushButton, "applyButton").setEnabled(False)
        panel.findChild(QPushButton, "cancelButton").setEnabled(True)
        progress.setRange(0, 72)
        progress.setValue(40)
        panel.findChild(QLabel, "statusLabel").setText("Fusing: 40 / 72 slices")
    else:
        for section in panel.findChildren(ctkCollapsibleButton):
            section.collapsed = False
        panel.findChild(QPushButton, "applyButton").setEnabled(True)
        progress.hide()
        panel.findChild(QLabel, "statusLabel").setText(
            "Created 'mri_t1 fused lkcfunet' in 21.5 s (network already loaded)."
        )
    panel.resize(400, 480 if state == "running" else 640)
    panel.show()
    for section in panel.findChildren(ctkCollapsibleButton):
        section.refresh()
    app.processEvents()
    panel.grab().save(output)


if __name__ == "__main__":
    render(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "running")
