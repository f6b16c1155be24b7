"""Every example of docs/python.md runs, in order, in a folder that sees the repository's
assets and adapter as its root does: the page cannot rot."""

import re
import subprocess
import sys


def test_the_python_page_examples_run(repo, tmp_path):
    page = (repo / "docs" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) >= 4
    for name in ("assets", "adapters"):
        (tmp_path / name).symlink_to(repo / name)
    for i, code in enumerate(blocks):
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, f"example {i + 1}:\n{code}\n{run.stdout}\n{run.stderr}"
    out = (tmp_path / "example" / "probe" / "probe.md").read_text()
    assert "spectrum" in out
