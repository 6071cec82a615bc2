"""
The wheel holds every module: built from the repository, installed into a
fresh virtual environment (not the editable install the tests run on), and
every module imported from there.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def run(*args: str | Path, cwd: Path) -> str:
    completed = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def test_the_wheel_installs_and_imports_every_module(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, ROOT, cwd=tmp_path
    )
    (wheel,) = dist.glob("wsrpc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {name for name in names if name.endswith(".py")}
    in_repo = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "wsrpc").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert in_wheel == in_repo
    assert "wsrpc/py.typed" in names  # the types travel with the package

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", f"{wheel}[fast]", cwd=tmp_path)
    modules = sorted(
        name[: -len(".py")].replace("/", ".").removesuffix(".__init__") for name in in_wheel
    )
    script = (
        "import importlib, wsrpc\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(wsrpc.__file__)\n"
    )
    where = run(python, "-c", script, cwd=tmp_path)  # not the repository: its copy
    assert where.strip().startswith(str(venv)), where
