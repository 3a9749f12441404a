"""Import MONAI without the optional plotting / data-frame / signal-processing packages it never
needs for inference -- for the headless entry points only.

This changes ``sys.meta_path`` while MONAI imports, so only processes that MedAnalysis owns call
it: the ``medanalysis`` command (:func:`MedAnalysisLib.cli.main`, for the commands that run a
network) and the Dask workers of a batch run (their worker plugin). Library code, and so Slicer,
which shares its process with other extensions, imports MONAI the ordinary way.

``import monai`` loads every MONAI submodule, and those call ``optional_import`` on packages
such as matplotlib, pandas, scikit-image and scipy.signal/stats as soon as they are installed:
about 2.5 s of a 5 s import on a laptop-class CPU, paid by every CLI call and every Dask worker.
:func:`import_monai` hides those packages from the import system *only while MONAI itself is
being imported* (MONAI then treats them as absent, which it supports); afterwards they import
normally for whoever needs them.  The engine uses MONAI's networks, ``sliding_window_inference``
and window utilities, none of which touch the hidden packages.  If the lean import fails for any
reason (another MONAI version importing one of them unconditionally), the partial import is
discarded and MONAI is imported the ordinary way.
"""

from __future__ import annotations

import importlib.abc
import sys

# Packages MONAI imports optionally at import time and the engine never uses through MONAI.
HIDDEN_DURING_IMPORT = ("matplotlib", "pandas", "skimage", "scipy.signal", "scipy.stats", "PIL", "tqdm",
                        "tensorboard", "tensorboardX", "torchvision", "h5py", "mlflow", "clearml", "transformers")


class _Hide(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = tuple(names)

    def find_spec(self, fullname, path=None, target=None):
        for name in self.names:
            if fullname == name or fullname.startswith(name + "."):
                raise ImportError(f"{fullname} hidden while importing MONAI")
        return None


def import_monai():
    """``import monai`` (lean when it can be); returns the module."""
    if "monai" in sys.modules:
        return sys.modules["monai"]
    already = set(sys.modules)
    finder = _Hide(name for name in HIDDEN_DURING_IMPORT if name not in sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        import monai  # noqa: F401
        return sys.modules["monai"]
    except Exception:  # noqa: BLE001 - fall back to a plain import below
        pass
    finally:
        sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n not in already and (n == "monai" or n.startswith("monai."))]:
        del sys.modules[name]
    import monai  # noqa: F811

    return monai
