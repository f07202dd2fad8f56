"""The README's Python examples must run as written."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run():
    with open(os.path.join(ROOT, "README.md")) as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        result = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, cwd=ROOT, timeout=600
        )
        assert result.returncode == 0, f"README block failed:\n{block}\n{result.stderr[-3000:]}"
