"""Model catalog and safe model loading.

Sources a user may name with ``--model``:

* a catalog name (``Resources/Models/catalog.json``): weights are used only when their
  SHA-256 matches the catalog;
* ``*.safetensors`` with a JSON network config beside it (same stem ``.json``) — safe;
* ``*.pt`` / ``*.pth`` holding a plain state dict — read with ``torch.load(weights_only=True)``,
  so pickled Python objects are refused and never executed; config JSON beside it;
* a TorchScript file or a MONAI bundle folder — these can run arbitrary code, so they are
  loaded only with ``trusted=True`` (``--trusted``).

Network configs may only name allow-listed classes of ``monai.networks.nets`` with plain
JSON arguments (see :func:`MedAnalysisLib.core.segment.netconfig.build_network`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError
from ..provenance import file_sha256, path_sha256
from .netconfig import parse_config_text

CATALOG_FILE = "catalog.json"


@dataclasses.dataclass
class LoadedModel:
    name: str
    network: Any
    config: dict
    sha256: str
    source: str
    labels: list  # [{"value", "name", "color", "category", "type"}]


def load_catalog(models_dir: Path) -> dict:
    path = Path(models_dir) / CATALOG_FILE
    if not path.is_file():
        raise InputError(path, "model catalog is missing")
    return json.loads(path.read_text())


def catalog_entry(models_dir: Path, name: str) -> dict:
    catalog = load_catalog(models_dir)
    for entry in catalog.get("models", []):
        if entry["name"] == name:
            return entry
    known = ", ".join(e["name"] for e in catalog.get("models", []))
    raise InputError("model", f"unknown model '{name}' (catalog has: {known}; or give a file path)")


def verify_catalog(models_dir: Path) -> list[dict]:
    """SHA-256 check of every catalog model's weights: [{name, ok, expected, actual, problem}]."""
    results = []
    for entry in load_catalog(models_dir).get("models", []):
        weights = Path(models_dir) / entry["weights"]
        result = {"name": entry["name"], "weights": entry["weights"], "expected": entry.get("sha256")}
        if not weights.is_file():
            result.update(ok=False, actual=None, problem="weights file missing")
        else:
            result["actual"] = file_sha256(weights)
            result["ok"] = result["actual"] == result["expected"]
            if not result["ok"]:
                result["problem"] = "SHA-256 mismatch"
        results.append(result)
    return results


def _config_beside(weights: Path, config_path: Optional[Path]) -> dict:
    candidates = [config_path] if config_path else [weights.with_suffix(".json"),
                                                    weights.parent / (weights.name.split(".")[0] + ".json")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            try:
                return parse_config_text(Path(candidate).read_bytes(), "network config")
            except ValueError as error:
                raise InputError(candidate, f"network config is not valid JSON ({error})") from None
    raise InputError(weights, "no network config: put a JSON config with the same name beside the weights")


def _build(config: dict, subject) -> Any:
    from .netconfig import build_network

    try:
        return build_network(config)
    except (ValueError, TypeError, RecursionError) as error:
        raise InputError(subject, f"network config refused: {error}") from None


def _load_state(network, state: dict, subject) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:300]
        raise InputError(subject, f"weights do not fit the configured network ({first})") from None


def _safe_torch_load(path: Path) -> dict:
    import pickle

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, ValueError, EOFError) as error:
        reason = " ".join(str(error).split())[:200]
        raise InputError(path, "refused: not a plain tensor state dict (it may contain pickled Python "
                               f"objects, which are never executed; use safetensors) [{reason}]") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise InputError(path, "refused: expected a dict of tensors (state dict)")
    return state


def _labels_of(config: dict) -> list:
    return list(config.get("labels", []))


def load_model(spec: str, models_dir: Path, trusted: bool = False, config_path: Optional[Path] = None) -> LoadedModel:
    """Resolve ``spec`` (catalog name or path) into a ready network (CPU, eval mode)."""
    path = Path(spec)
    if not path.exists() and os.sep not in spec and not path.suffix:
        return _load_catalog_model(spec, Path(models_dir))
    if not path.exists():
        raise InputError(spec, "model file or folder does not exist")
    if path.is_dir():
        return _load_bundle(path, trusted)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        config = _config_beside(path, config_path)
        network = _build(config, path)
        try:
            state = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own types
            raise InputError(path, f"not a readable safetensors file ({error})") from None
        _load_state(network, state, path)
        return LoadedModel(config.get("name", path.stem), network.eval(), config, file_sha256(path), str(path),
                           _labels_of(config))
    if suffix in (".pt", ".pth", ".ts"):
        if _is_torchscript(path):
            if not trusted:
                raise InputError(path, "TorchScript models can run arbitrary code: pass --trusted to load it")
            import torch

            network = torch.jit.load(str(path), map_location="cpu")
            config = _config_beside(path, config_path)
            return LoadedModel(config.get("name", path.stem), network.eval(), config, file_sha256(path), str(path),
                               _labels_of(config))
        state = _safe_torch_load(path)
        config = _config_beside(path, config_path)
        network = _build(config, path)
        _load_state(network, state, path)
        return LoadedModel(config.get("name", path.stem), network.eval(), config, file_sha256(path), str(path),
                           _labels_of(config))
    raise InputError(path, f"unsupported model file type '{suffix}' (safetensors, .pt state dict, "
                           "TorchScript with --trusted, or a MONAI bundle folder)")


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _load_catalog_model(name: str, models_dir: Path) -> LoadedModel:
    from safetensors.torch import load_file

    entry = catalog_entry(models_dir, name)
    weights = models_dir / entry["weights"]
    if not weights.is_file():
        raise InputError(weights, "catalog weights file is missing")
    actual = file_sha256(weights)
    if actual != entry.get("sha256"):
        raise InputError(weights, f"SHA-256 mismatch (catalog {str(entry.get('sha256'))[:12]}..., file "
                                  f"{actual[:12]}...): refusing to load")
    config = json.loads((models_dir / entry["config"]).read_text())
    network = _build(config, weights)
    _load_state(network, load_file(str(weights)), weights)
    labels = entry.get("labels") or _labels_of(config)
    return LoadedModel(name, network.eval(), config, actual, str(weights), labels)


def _load_bundle(folder: Path, trusted: bool) -> LoadedModel:
    if not trusted:
        raise InputError(folder, "MONAI bundle configs can evaluate arbitrary expressions: pass --trusted to load it")
    import torch
    from monai.bundle import ConfigParser

    config_file = next((folder / "configs" / name for name in ("inference.json", "inference.yaml")
                        if (folder / "configs" / name).is_file()), None)
    if config_file is None:
        raise InputError(folder, "not a MONAI bundle (configs/inference.json missing)")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    network = parser.get_parsed_content("network_def")
    weights = folder / "models" / "model.pt"
    if weights.is_file():
        network.load_state_dict(_safe_torch_load(weights))
    medanalysis = folder / "configs" / "medanalysis.json"
    config = json.loads(medanalysis.read_text()) if medanalysis.is_file() else {}
    if "network" not in config:
        config["network"] = {"class": type(network).__name__,
                             "args": {"in_channels": 1, "out_channels": int(parser.get("network_def#out_channels", 2))}}
    config.setdefault("preprocessing", {"spacing_mm": None, "orientation": "RAS",
                                        "intensity": {"method": "percentile"}, "input_channels": 1})
    config.setdefault("inference", {"roi_size": [96, 96, 96], "overlap": 0.25, "sw_batch_size": 1})
    return LoadedModel(folder.name, network.eval(), config, path_sha256(folder), str(folder), _labels_of(config))


def update_catalog_hashes(models_dir: Path) -> dict:
    """Refresh each catalog entry's SHA-256 and training summary from the files (maintainers' tool)."""
    path = Path(models_dir) / CATALOG_FILE
    catalog = json.loads(path.read_text())
    for entry in catalog.get("models", []):
        weights = Path(models_dir) / entry["weights"]
        if weights.is_file():
            entry["sha256"] = file_sha256(weights)
            entry["size_bytes"] = weights.stat().st_size
        config_file = Path(models_dir) / entry["config"]
        if config_file.is_file():
            config = json.loads(config_file.read_text())
            if "training" in config:
                entry["training"] = config["training"]
    path.write_text(json.dumps(catalog, indent=2) + "\n")
    return catalog


if __name__ == "__main__":
    import sys

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "Resources" / "Models"
    print(json.dumps(update_catalog_hashes(folder), indent=2))
