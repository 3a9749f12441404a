"""``medanalysis models list|info|verify``: the shipped model catalog."""

from __future__ import annotations

from ..cli import EXIT_BAD_INPUT, EXIT_OK, emit


def register(add) -> None:
    parser = add("models", run, "list, describe or verify the shipped models")
    parser.add_argument("action", choices=("list", "info", "verify"))
    parser.add_argument("name", nargs="?", help="model name for info (default: the default model)")


def run(args) -> int:
    from .. import resources
    from ..core.segment.models import catalog_entry, load_catalog, verify_catalog
    from ..logic.segmentationlogic import DEFAULT_MODEL

    folder = resources.modelsDir()
    if args.action == "list":
        catalog = load_catalog(folder)
        rows = [{"name": e["name"], "task": e.get("task", ""), "labels": [l["name"] for l in e.get("labels", [])
                                                                           if l.get("value", 1) != 0]}
                for e in catalog.get("models", [])]
        emit({"models": rows, "default": DEFAULT_MODEL}, args.json,
             lambda r: "\n".join(f"{m['name']:24s} {m['task']}" for m in r["models"]))
        return EXIT_OK
    if args.action == "info":
        entry = catalog_entry(folder, args.name or DEFAULT_MODEL)
        emit(entry, args.json, lambda e: "\n".join(f"{k}: {v}" for k, v in e.items()))
        return EXIT_OK
    results = verify_catalog(folder)
    emit({"models": results, "ok": all(r["ok"] for r in results)}, args.json,
         lambda r: "\n".join(f"{m['name']:24s} {'OK' if m['ok'] else 'FAILED: ' + m.get('problem', '')}"
                             for m in r["models"]))
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_BAD_INPUT
