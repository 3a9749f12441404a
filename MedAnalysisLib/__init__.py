"""MedAnalysis: medical image analysis for 3D Slicer and headless Python.

Research software, not for clinical use.

Layers (imports point downward only):
  cli / batch -> logic (MRML nodes) -> mrml (MRML <-> SimpleITK bridge) -> core (pure algorithms)
"""

__version__ = "0.1.0"

RESEARCH_USE_NOTICE = (
    "MedAnalysis is research software. It is not a medical device and must not be used "
    "for clinical decisions."
)
