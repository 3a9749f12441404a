"""Checks on the extension layout that a Slicer build would otherwise catch late."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from helpers.paths import REPO

MODULES_DIR = REPO / "MedAnalysis"


def cmake_files():
    return [REPO / "CMakeLists.txt", *sorted(REPO.glob("MedAnalysis/**/CMakeLists.txt"))]


def module_names():
    text = (MODULES_DIR / "CMakeLists.txt").read_text()
    match = re.search(r"set\(MEDANALYSIS_MODULES(.*?)\)", text, re.S)
    return [m for m in match.group(1).split() if not m.startswith("#")] if match else []


def test_top_level_layout():
    for name in ("CMakeLists.txt", "MedAnalysis", "MedAnalysisLib", "Testing", "Resources", "README.md",
                 "LICENSE", "pyproject.toml", "Makefile", ".ci/run", ".gitignore", "MedAnalysis.json",
                 "Resources/Icons/MedAnalysis.png"):
        assert (REPO / name).exists(), name


def test_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key}\s+\"", text), key
    for call in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MedAnalysis)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert call in text, call
    import json

    index = json.loads((REPO / "MedAnalysis.json").read_text())
    assert {"category", "scm_url", "build_dependencies"} <= set(index)


def test_icon_is_128_square():
    from PIL import Image

    assert Image.open(REPO / "Resources/Icons/MedAnalysis.png").size == (128, 128)


def test_every_file_named_in_cmake_exists():
    for cmake in cmake_files():
        text = cmake.read_text()
        for token in re.findall(r"[\w./${}-]+\.(?:py|ui|png|json|safetensors|nii\.gz)\b", text):
            if "${" in token or token.startswith(("http", "//")) or "*" in token:
                continue
            assert (cmake.parent / token).exists(), f"{cmake.relative_to(REPO)} names missing {token}"
    for module in module_names():
        for relative in (f"{module}.py", f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png"):
            assert (MODULES_DIR / relative).exists(), f"module {module} lacks {relative}"


def installed_resource_paths():
    """Paths (relative to Slicer's qt-scripted-modules folder) every resource installs to."""
    paths = []
    for module in module_names():
        paths += [f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png"]
    for folder in ("Models", "SampleData", "Icons"):
        paths += [p.relative_to(REPO).as_posix() for p in (REPO / "Resources" / folder).glob("**/*") if p.is_file()]
    return paths


def test_resource_file_names_unique_across_extension():
    paths = installed_resource_paths()
    duplicates = {p for p in paths if paths.count(p) > 1}
    assert not duplicates, duplicates
    ui_names = [Path(p).name for p in paths if p.endswith(".ui")]
    assert len(ui_names) == len(set(ui_names))


def test_module_files_define_class_of_their_name_and_ui_widgets_exist():
    for path in sorted(MODULES_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        assert path.stem in classes, f"{path.name} must define class {path.stem}"
        used = set(re.findall(r"self\.ui\.(\w+)", path.read_text()))
        ui_file = MODULES_DIR / "Resources" / "UI" / f"{path.stem}.ui"
        if used:
            assert ui_file.exists(), f"{path.name} uses self.ui but {ui_file.name} is missing"
            names = {w.get("name") for w in ET.parse(ui_file).iter("widget")}
            names |= {a.get("name") for a in ET.parse(ui_file).iter("action")}
            missing = used - names
            assert not missing, f"{path.name} uses widgets missing from {ui_file.name}: {sorted(missing)}"
        assert "not for clinical use" in path.read_text().lower() or "clinical" in path.read_text().lower()


def test_core_never_imports_slicer_vtk_or_qt():
    for path in (REPO / "MedAnalysisLib" / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("slicer", "vtk", "qt", "ctk"), f"{path} imports {name}"


def test_logic_never_imports_qt():
    for path in [*(REPO / "MedAnalysisLib" / "logic").rglob("*.py"), *(REPO / "MedAnalysisLib" / "core").rglob("*.py"),
                 REPO / "MedAnalysisLib" / "mrml.py", REPO / "MedAnalysisLib" / "cli.py"]:
        text = path.read_text()
        assert not re.search(r"^\s*(import qt|from qt)", text, re.M), path


def test_slicer_requirements_never_replace_slicer_packages():
    from MedAnalysisLib import dependencies

    for _, requirement in dependencies.SLICER_REQUIREMENTS:
        name = re.split(r"[<>=\[]", requirement)[0].lower()
        assert name not in {n.lower() for n in dependencies.NEVER_INSTALL_IN_SLICER}


def test_wheel_ships_resources(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("medanalysis-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "MedAnalysisLib/Resources/SampleData/mni152_t1.nii.gz" in names
    assert "MedAnalysisLib/Resources/SampleData/NOTICE.txt" in names
    assert "MedAnalysisLib/mrml.py" in names and "MedAnalysisLib/core/geometry.py" in names
    assert "MedAnalysisLib/core/dicom/__init__.py" in names and "MedAnalysisLib/core/dicom/pixels.py" in names
    assert "MedAnalysisLib/core/dicom.py" not in names  # a package now: no stale module beside it
    # training, synthetic data and fixture generators stay out of the product
    assert not any(n.startswith("Training/") or "/train.py" in n or "/synth.py" in n or "phantom" in n
                   for n in names), sorted(n for n in names if "Training" in n or "synth" in n)
    assert not any(n.endswith("make_sample_data.py") or n.endswith("make_study_pair.py") for n in names)


def test_cmake_installs_no_training_code():
    text = (REPO / "CMakeLists.txt").read_text()
    assert "Training" not in text
    assert not list((REPO / "MedAnalysisLib").rglob("train*.py")) and not list((REPO / "MedAnalysisLib").rglob("synth*.py"))


def test_library_use_leaves_the_import_system_alone():
    """Inside Slicer other extensions share the process: importing the library and running a
    network must not add import hooks (the lean MONAI import is for our own entry points only)."""
    code = (
        "import sys\n"
        "import slicer, vtk  # the application's own modules (VTK installs its import hook): already there in Slicer\n"
        "before = list(sys.meta_path)\n"
        "import MedAnalysisLib, MedAnalysisLib.mrml\n"
        "from MedAnalysisLib.logic import segmentationlogic, monitoringlogic, brainlogic, registrationlogic\n"
        "from MedAnalysisLib.core.segment import engine, netconfig\n"
        "import torch\n"
        "config = netconfig.default_config()\n"
        "config['network']['args'].update(channels=[4, 8], strides=[2], num_res_units=0)\n"
        "net = netconfig.build_network(config)\n"
        "seg = engine.SlidingWindowSegmenter(net, config, engine.SegmentationParameters(device='cpu', threads=1, refine=False))\n"
        "import numpy as np\n"
        "seg.segment(np.random.rand(40, 40, 40).astype('float32'), engine.ProgressReporter())\n"
        "assert 'monai' in sys.modules\n"
        "print(sys.meta_path == before, len(sys.meta_path), len(before))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "True", result.stdout
