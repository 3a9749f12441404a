"""Inputs that lie (issue 16): every command on every file of the bad-input corpus
(Testing/Data/bad/make_bad_corpus.py, generated into tmp_path).

For each run: exit 0 or 2 only; when 2, exactly one non-progress stderr line naming the file,
no traceback, no 'internal error', the pre-existing output untouched and nothing else written;
never killed by a signal; peak resident memory under 1.5 GB (except a segment run that succeeds:
the model); the sentinel's content (a file headers point at) never in any output, and the headers
pointing at it refused.

All runs for the corpus go through bad_input_driver.py: one child process calling
``MedAnalysisLib.cli.main(argv)`` per run (fd 1/2 captured per run, peak memory per run), restarted
after a run it died in, so a hard abort is reported with the file and command that caused it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path

import pytest

from helpers import bad_input_driver as driver

corpus = driver.load_generator()
CASES = list(corpus.CASES)
SENTINEL_CASES = {"abs_datafile.nhdr", "escape_datafile.nhdr", "symlink_datafile.nhdr", "list_datafile.nhdr",
                  "abs_datafile.mhd", "escape_datafile.mhd", "zip_nhdr_sentinel.zip"}
INVOCATION_TIMEOUT_S = 30  # small files, 24x28x20 companions (slowest normal run ~11 s: first segment): past this = hung
PREVIOUS = b"previous output: must survive a refused run\n"

# id -> (argv template, output file name or None, output is a report folder)
COMMANDS = {
    "info": (["info", "{F}", "--json"], None),
    "import": (["import", "{F}", "-o", "{OUT}"], "out.nii.gz"),
    "enhance": (["enhance", "{F}", "-o", "{OUT}", "--denoise", "gaussian"], "out.nii.gz"),
    "segment": (["segment", "{F}", "-o", "{OUT}", "--brain-mask", "off"], "out.seg.nrrd"),
    "register-moving": (["register", "{GOOD}", "{F}", "-o", "{OUT}"], "out.nii.gz"),
    "register-fixed": (["register", "{F}", "{GOOD}", "-o", "{OUT}"], "out.nii.gz"),
    "register-fixed-mask": (["register", "{GOOD}", "{GOOD2}", "-o", "{OUT}", "--fixed-mask", "{F}"], "out.nii.gz"),
    "monitor-baseline-seg": (["monitor", "{GOOD}", "{GOOD}", "--baseline-seg", "{F}", "--followup-seg", "{GOODSEG}",
                              "-o", "{REPORT}"], None),
}
SLOW_COMMANDS = {
    "register-moving-mask": (["register", "{GOOD}", "{GOOD2}", "-o", "{OUT}", "--moving-mask", "{F}"], "out.nii.gz"),
    "enhance-full": (["enhance", "{F}", "-o", "{OUT}", "--bias-correct", "--normalize", "zscore", "--clahe",
                      "--spacing", "3,3,3"], "out.nii.gz"),
    "enhance-mask": (["enhance", "{GOOD}", "-o", "{OUT}", "--denoise", "gaussian", "--mask", "{F}", "--crop"],
                     "out.nii.gz"),
    "segment-brain-auto": (["segment", "{F}", "-o", "{OUT}", "--brain-mask", "auto"], "out.seg.nrrd"),
    "segment-brain-mask": (["segment", "{GOOD}", "-o", "{OUT}", "--brain-mask", "{F}"], "out.seg.nrrd"),
    "monitor-baseline": (["monitor", "{F}", "{GOOD}", "--baseline-seg", "{GOODSEG}", "--followup-seg", "{GOODSEG}",
                          "-o", "{REPORT}"], None),
    "import-anonymize": (["import", "{F}", "-o", "{OUT}", "--anonymize", "--export-dicom", "{DIR}"], "out.nii.gz"),
}


def build_groups(base: Path, commands: dict, files: dict, good: dict) -> tuple:
    """Job groups (one per corpus file) and {(case, command): output folder}."""
    groups, folders = [], {}
    for name in CASES:
        invocations = []
        for command, (template, output) in commands.items():
            folder = base / "out" / name / command
            folder.mkdir(parents=True)
            if output:
                (folder / output).write_bytes(PREVIOUS)
            values = {"F": files[name], "OUT": folder / (output or "none"), "REPORT": folder / "report",
                      "DIR": folder / "dicom", **good}
            invocations.append({"id": command, "argv": [a.format(**{k: str(v) for k, v in values.items()})
                                                        for a in template]})
            folders[name, command] = folder
        groups.append({"id": name, "invocations": invocations})
    return groups, folders


def run_corpus(base: Path, commands: dict) -> dict:
    token = f"SENTINEL-{secrets.token_hex(8)}"
    sentinel = base / "secret" / "SENTINEL.raw"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_bytes(corpus.sentinel_content(token))
    files = corpus.main(base / "corpus", sentinel)
    good = corpus.write_good_images(base / "good")
    groups, folders = build_groups(base, commands, files, good)
    before = {key: driver.snapshot(folder) for key, folder in folders.items()}
    started = time.perf_counter()
    results = driver.run_driver(groups, base / "driver", invocation_timeout_s=INVOCATION_TIMEOUT_S)
    seconds = time.perf_counter() - started
    slowest = sorted(results.values(), key=lambda r: -(r["seconds"] or 0))[:5]
    print(f"\n[bad inputs] {len(results)} runs on {len(CASES)} files in {seconds:.1f} s; slowest: " +
          ", ".join(f"{r['group']} {r['id']} {r['seconds']} s" for r in slowest))
    return {"token": token.encode(), "sentinel": sentinel, "sentinel_sha": hashlib.sha256(sentinel.read_bytes()),
            "files": files, "folders": folders, "before": before, "results": results, "commands": commands,
            "corpus_dir": base / "corpus"}


def case_problems(run: dict, name: str) -> list:
    problems = []
    basename = run["files"][name].name
    for command in run["commands"]:
        result = run["results"][name, command]
        folder = run["folders"][name, command]
        label = f"{command} ({' '.join(result['argv'][:1])} ...)"
        issues = driver.contract_problems(result, basename,
                                          memory_exempt=command.startswith("segment") and result["rc"] == 0)
        if result["rc"] == 2 or result.get("died"):
            after = driver.snapshot(folder)
            if after != run["before"][name, command]:
                issues.append("refused run changed its outputs: " + ", ".join(sorted(
                    k for k in set(after) | set(run["before"][name, command])
                    if after.get(k) != run["before"][name, command].get(k))))
        if name in SENTINEL_CASES and result["rc"] == 0:
            issues.append("a header pointing at a file outside its folder was accepted (exit 0)")
        if run["token"] in (result["stdout"] + result["stderr"]).encode(errors="replace"):
            issues.append("the sentinel's content appears on stdout/stderr")
        leaked = driver.files_containing(folder, run["token"])
        if leaked:
            issues.append("the sentinel's content appears in " + ", ".join(p.name for p in leaked))
        problems += [f"{name} | {label}: {issue}" for issue in issues]
    if name == "zip_slip.zip":
        escaped = [p for p in corpus.escaped_paths(run["corpus_dir"]) if p.exists()]
        if escaped:
            problems.append(f"{name}: ZIP member extracted outside the extraction folder: {escaped}")
    if hashlib.sha256(run["sentinel"].read_bytes()).digest() != run["sentinel_sha"].digest():
        problems.append(f"{name}: the sentinel file was modified")
    return problems


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    return run_corpus(tmp_path_factory.mktemp("bad-inputs"), COMMANDS)


@pytest.fixture(scope="module")
def corpus_run_slow(tmp_path_factory):
    return run_corpus(tmp_path_factory.mktemp("bad-inputs-slow"), SLOW_COMMANDS)


def test_corpus_is_small_and_deterministic(tmp_path):
    sentinel = tmp_path / "secret" / "SENTINEL.raw"
    sentinel.parent.mkdir()
    sentinel.write_bytes(corpus.sentinel_content("SENTINEL-0123456789abcdef"))
    first = {name: path.read_bytes() for name, path in corpus.main(tmp_path / "corpus", sentinel).items()}
    again = {name: path.read_bytes() for name, path in corpus.main(tmp_path / "corpus", sentinel).items()}
    assert first == again
    assert set(first) == set(CASES)
    assert all(len(data) < 200_000 for data in first.values()), {n: len(d) for n, d in first.items()}
    assert len(first["memory_bomb.nii.gz"]) < 20_000
    assert (tmp_path / "corpus" / "symlink_datafile.raw").resolve() == sentinel.resolve()


@pytest.mark.parametrize("name", CASES)
def test_bad_input(corpus_run, name):
    problems = case_problems(corpus_run, name)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_bad_input_more_commands(corpus_run_slow, name):
    problems = case_problems(corpus_run_slow, name)
    assert not problems, "\n".join(problems)
