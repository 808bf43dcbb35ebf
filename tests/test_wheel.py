"""The built package: `python -m build` makes a wheel and an sdist, and the wheel, installed into a
fresh venv outside the source tree, imports and runs from its own files.

The venv reuses this environment's packages (torch and the rest) through a .pth line added after
the wheel is installed, so nothing is downloaded and pip never sees this environment's rpmetric.
A path line in a .pth does not run the .pth files of the folder it adds, so an editable install
of rpmetric there stays inactive: the venv's rpmetric is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import torch
from PIL import Image

import rpmetric
import tinymodels

SOURCE = Path(__file__).resolve().parents[1]


def _run(args, cwd, timeout=300, **env):
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # never the source tree
    clean.update(HF_HUB_OFFLINE="1", **env)
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=clean, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(wheel, sdist) built from a copy of the package's files (so the checkout gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(SOURCE / name, src / name)
    shutil.copytree(SOURCE / "rpmetric", src / "rpmetric", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # No isolation: the test extra brings build and setuptools, so nothing is downloaded.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", root / "dist", src], cwd=root)
    wheels, sdists = sorted((root / "dist").glob("*.whl")), sorted((root / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    return wheels[0], sdists[0]


def test_wheel_and_sdist_carry_the_zoo_licence_and_metadata(dist):
    wheel, sdist = dist
    version = rpmetric.__version__
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = Parser().parsestr(z.read(f"rpmetric-{version}.dist-info/METADATA").decode())
    assert "rpmetric/models/zoo.json" in names and "rpmetric/integrations/torchmetrics.py" in names
    assert f"rpmetric-{version}.dist-info/licenses/LICENSE" in names
    assert not any(n.startswith("tests/") for n in names)
    assert meta["License-Expression"] == "MIT" and meta["Keywords"]
    assert any(c.startswith("Intended Audience") for c in meta.get_all("Classifier"))
    assert meta.get_all("Project-URL") and "torchmetrics" in meta.get_all("Provides-Extra")
    with tarfile.open(sdist) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    assert {"rpmetric/models/zoo.json", "LICENSE", "README.md", "pyproject.toml"} <= members


@pytest.mark.slow
def test_wheel_installed_outside_the_source_tree_runs(dist, tmp_path):
    wheel, _ = dist
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # pip of this environment, installing into the venv, which sees nothing else yet.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], cwd=tmp_path)
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    parent = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # torch's folder(s)
    (purelib / "_rpmetric_test_parent_env.pth").write_text("".join(f"{p}\n" for p in parent))
    work = tmp_path / "work"  # the working directory: neither the checkout nor the venv
    work.mkdir()

    where = _run([python, "-c", "import rpmetric; print(rpmetric.__file__); print(len(rpmetric.list_models()))"],
                 cwd=work).split()
    assert Path(where[0]).resolve().is_relative_to(purelib.resolve()), where[0]
    assert not Path(where[0]).resolve().is_relative_to(SOURCE)
    assert int(where[1]) == len(rpmetric.list_models())

    script = python.parent / ("rpmetric.exe" if os.name == "nt" else "rpmetric")
    assert _run([script, "--version"], cwd=work).strip() == f"rpmetric {rpmetric.__version__}"
    listed = _run([script, "models"], cwd=work)
    assert all(name in listed for name in rpmetric.list_models())

    folder = tinymodels.save_open_clip(tmp_path / "tiny-vit", tinymodels.TINY_VIT_CFG)
    gen = torch.Generator().manual_seed(0)
    images = []
    for name in ("a.png", "b.png"):
        pixels = (torch.rand(3, 40, 48, generator=gen) * 255).round().to(torch.uint8)
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(work / name)
        images.append(work / name)
    printed = float(_run([script, "distance", *images, "--model", folder, "--device", "cpu"], cwd=work))
    # The source tree's metric on the same files: the wheel computes the same distance.
    metric = rpmetric.RobustDistance(str(folder), device="cpu")
    prepare = metric.encoder.prepare
    with torch.no_grad():
        expected = metric(*(prepare(rpmetric.load_image(p)) for p in images)).item()
    assert printed == pytest.approx(expected, rel=1e-5, abs=1e-6)
