"""Packaging glue: ship the top-level Resources/ folder as ``MedAnalysisLib/Resources``.

Everything else is in pyproject.toml. The extension build (CMake) installs the same
Resources/ beside MedAnalysisLib, where MedAnalysisLib.resources looks first.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["MedAnalysisLib", "MedAnalysisLib.*"]) + ["MedAnalysisLib.Resources"],
    package_dir={"MedAnalysisLib.Resources": "Resources"},
    package_data={"MedAnalysisLib.Resources": ["Models/*", "SampleData/*", "Icons/*"]},
)
