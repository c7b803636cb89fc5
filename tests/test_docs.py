"""The Python examples of README.md and docs/*.md that are marked runnable execute as written.

A fenced block whose info string is ``python runnable`` is run (docs/contributing.md): each in a fresh namespace,
in an empty temporary working folder, with the shipped demo data (``monai_lkcfusion.data.demo_files()``) as input.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUNNABLE = "python runnable"


def runnable_blocks(path: Path) -> list[tuple[int, str]]:
    """The ``python runnable`` blocks of a Markdown file as ``(line of the opening fence, code)``."""
    text = path.read_text()
    return [
        (text.count("\n", 0, match.start()) + 1, match.group("code"))
        for match in FENCE.finditer(text)
        if match.group("info").split() == RUNNABLE.split()
    ]


BLOCKS = [
    pytest.param(code, id=f"{path.relative_to(REPO)}:{line}")
    for path in DOCUMENTS
    for line, code in runnable_blocks(path)
]


def test_readme_has_a_runnable_example() -> None:
    assert runnable_blocks(REPO / "README.md"), "README.md lost its ```python runnable example"


def test_fence_parsing() -> None:
    text = "a\n```python runnable\nx = 1\n```\n```python\ny = 2\n```\n```bash\nls\n```\n"
    blocks = [(m.group("info"), m.group("code")) for m in FENCE.finditer(text)]
    assert blocks == [("python runnable", "x = 1\n"), ("python", "y = 2\n"), ("bash", "ls\n")]


@pytest.mark.parametrize("code", BLOCKS)
def test_runnable_block(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<markdown block>", "exec"), {"__name__": "__docs__"})
