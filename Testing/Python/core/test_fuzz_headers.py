"""Inputs that lie (issue 16): seeded header-mutation fuzz of NIfTI, NRRD and DICOM files.

Valid small files (Testing/Data/bad/make_bad_corpus.py) are mutated (NIfTI: fields of the 348-byte
header and random bytes in it; NRRD: header lines and values, data files pointing outside;
DICOM: Rows, Columns, Bits*, NumberOfFrames, PixelSpacing, ImagePositionPatient,
ImageOrientationPatient, text fields with odd bytes, transfer syntax, PixelData length) and each
mutant goes through ``info --json``, ``import -o`` and, for DICOM, ``import --anonymize
--export-dicom``, all in one child process (bad_input_driver.py) that is restarted after a run it
died in. Same contract as cli/test_bad_inputs.py: exit 0 or 2 only; when 2 one non-progress stderr
line naming the file, no traceback; never killed by a signal; bounded memory; a refused run leaves
the pre-existing output as it was; the sentinel's content never in an output.

Default: a few hundred mutants in all; ``-m slow``: thousands. A summary per format is printed
(run with -s to see it when everything passes).
"""

from __future__ import annotations

import gzip
import math
import secrets
import struct
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from helpers import bad_input_driver as driver

corpus = driver.load_generator()
DEFAULT_COUNTS = {"nifti": 200, "nrrd": 200, "dicom": 120}
SLOW_COUNTS = {"nifti": 1500, "nrrd": 1200, "dicom": 1200}
FUZZ_SEED = 16016
INVOCATION_TIMEOUT_S = 30  # info/import of a file of a few KB: a run past this is reported as hung
PREVIOUS = b"previous output: must survive a refused run\n"

INTS = [0, 1, -1, 2, 3, 4, 5, 7, 8, 255, 256, 1000, 4000, 32767, -32768, -2]
FLOATS = [0.0, -0.0, -1.0, 1e-30, 1e30, 3.4e38, math.nan, math.inf, -math.inf, 0.5, 1e6, 348.0, 352.0, 1e12, -1e-6]
DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 2305, 9999, -1]

# NIfTI-1 header fields: name -> (offset, struct format)
NIFTI_FIELDS = {"sizeof_hdr": (0, "i"), "dim_info": (39, "B"), "intent_code": (68, "h"), "datatype": (70, "h"),
                "bitpix": (72, "h"), "slice_start": (74, "h"), "vox_offset": (108, "f"), "scl_slope": (112, "f"),
                "scl_inter": (116, "f"), "slice_end": (120, "h"), "slice_code": (122, "B"),
                "xyzt_units": (123, "B"), "cal_max": (124, "f"), "qform_code": (252, "h"), "sform_code": (254, "h"),
                "magic": (344, "4s")}
NIFTI_FIELDS.update({f"dim[{i}]": (40 + 2 * i, "h") for i in range(8)})
NIFTI_FIELDS.update({f"pixdim[{i}]": (76 + 4 * i, "f") for i in range(8)})
NIFTI_FIELDS.update({f"quatern[{i}]": (256 + 4 * i, "f") for i in range(6)})
NIFTI_FIELDS.update({f"srow[{i}]": (280 + 4 * i, "f") for i in range(12)})


def _pick(rng, values):
    return values[int(rng.integers(len(values)))]


# --- NIfTI ---------------------------------------------------------------------------------------

def mutate_nifti(rng, base: bytes) -> tuple:
    data = bytearray(base)
    notes = []
    cut = None
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.random()
        if kind < 0.6:
            name = _pick(rng, list(NIFTI_FIELDS))
            offset, fmt = NIFTI_FIELDS[name]
            if fmt == "4s":
                value = _pick(rng, [b"n+1\0", b"ni1\0", b"n+2\0", b"\xff\xff\xff\xff", b"\0\0\0\0"])
            elif name == "datatype":
                value = _pick(rng, DATATYPES)
            elif fmt == "f":
                value = _pick(rng, FLOATS)
            elif fmt == "B":
                value = int(rng.integers(256))
            elif fmt == "i":
                value = _pick(rng, [0, 540, 347, -348, 1 << 24, 0x5C010000])  # last: 348 big-endian
            else:
                value = _pick(rng, INTS)
            struct.pack_into("<" + fmt, data, offset, value)
            if name == "datatype" and rng.random() < 0.5:  # keep bitpix consistent half of the time
                bits = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64,
                        128: 24, 32: 64, 1792: 128, 2304: 32}.get(value, 0)
                struct.pack_into("<h", data, 72, bits)
            notes.append(f"{name}={value!r}")
        elif kind < 0.85:
            count = int(rng.integers(1, 9))
            for _ in range(count):
                data[int(rng.integers(348))] = int(rng.integers(256))
            notes.append(f"{count} random header bytes")
        else:
            cut = int(rng.integers(0, len(data)))
    if cut is not None:  # last, so that field mutations stay inside the buffer
        del data[cut:]
        notes.append(f"truncated at {cut}")
    suffix = ".nii"
    payload = bytes(data)
    if rng.random() < 0.3:
        suffix = ".nii.gz"
        payload = gzip.compress(payload, mtime=0)
    return payload, suffix, notes


# --- NRRD ----------------------------------------------------------------------------------------

NRRD_VALUES = {
    "type": ["float", "double", "block", "uint64", "garbage", "int24", "signed char", ""],
    "dimension": ["0", "2", "4", "17", "-1", "2147483647", "three"],
    "sizes": ["0 8 6", "-1 8 6", "2147483648 8 6", "99999 99999 99999", "7 8", "7 8 6 5", "a b c", "1e3 8 6",
              "nan 8 6", "70000 70000 1", "4096 4096 64"],
    "space directions": ["(nan,0,0) (0,1,0) (0,0,1)", "(0,0,0) (0,0,0) (0,0,0)", "(1,0,0) (0,1,0)",
                         "none none none", "(1e308,0,0) (0,1e308,0) (0,0,1e308)", "(1,0,0) (1,0,0) (0,0,1)",
                         "(inf,0,0) (0,1,0) (0,0,1)", "(1,0) (0,1) (0,0)", "garbage"],
    "space origin": ["(nan,nan,nan)", "(inf,0,0)", "(1,2)", "garbage", "(1e308,-1e308,1e308)"],
    "encoding": ["gzip", "bzip2", "hex", "ascii", "text", "unknown", "raw"],
    "endian": ["big", "middle", ""],
    "kinds": ["list domain domain", "RGB-color domain domain", "garbage", "domain domain"],
    "space": ["right-anterior-superior", "3", "bogus", "scanner-xyz-time"],
}
NRRD_EXTRA = ["line skip: 99999", "byte skip: -1", "byte skip: 999999999", "space dimension: 3",
              "measurement frame: (nan,0,0) (0,1,0) (0,0,1)", "spacings: 0 0 0", "thicknesses: nan nan nan",
              "axis mins: nan nan nan", "centers: cell cell", "space units: \"mm\" \"mm\"", "content: \xff\xfe odd"]


def mutate_nrrd(rng, base: bytes, sentinel: Path, folder: Path) -> tuple:
    header_end = base.index(b"\n\n")
    lines = base[:header_end].decode("latin-1").split("\n")
    body = base[header_end + 2:]
    notes = []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.random()
        fields = [i for i, line in enumerate(lines) if ": " in line]
        if kind < 0.5 and fields:
            index = _pick(rng, fields)
            key = lines[index].split(": ", 1)[0]
            value = _pick(rng, NRRD_VALUES.get(key, ["", "garbage", "0"]))
            lines[index] = f"{key}: {value}"
            notes.append(f"{key}: {value}")
        elif kind < 0.6:
            extra = _pick(rng, NRRD_EXTRA)
            lines.insert(int(rng.integers(1, len(lines) + 1)), extra)
            notes.append(f"+{extra!r}")
        elif kind < 0.72:
            choice = int(rng.integers(4))
            relative = Path(*([".."] * len(folder.parts[1:]))) / str(sentinel).lstrip("/")
            value = [str(sentinel), str(relative), "LIST\n" + str(sentinel), "../" + sentinel.name][choice]
            lines.append(f"data file: {value}")
            notes.append(f"data file: {value.splitlines()[-1]}")
        elif kind < 0.8 and len(fields) > 1:
            index = _pick(rng, fields)
            notes.append(f"deleted '{lines[index]}'")
            del lines[index]
        elif kind < 0.85:
            lines[0] = _pick(rng, ["NRRD0009", "NRRD", "nrrd0004", "NRRD000", "NRRD0001"])
            notes.append(f"magic {lines[0]}")
        elif kind < 0.9:
            index = int(rng.integers(1, len(lines) + 1))
            lines.insert(index, "\xff\xfe\x00: \x80\x81")
            notes.append("non-UTF-8 line")
        else:
            cut = int(rng.integers(0, len(body) + 1))
            body = body[:cut]
            notes.append(f"body truncated at {cut}")
    points_outside = any(line.startswith("data file:") for line in lines)  # all we add point outside
    return "\n".join(lines).encode("latin-1") + b"\n\n" + body, notes, points_outside


# --- DICOM ---------------------------------------------------------------------------------------

DICOM_VALUES = {
    "Rows": ("US", [0, 1, 2, 15, 17, 65535]),
    "Columns": ("US", [0, 1, 2, 15, 17, 65535]),
    "BitsAllocated": ("US", [0, 1, 7, 8, 12, 32, 64, 65535]),
    "BitsStored": ("US", [0, 1, 17, 64, 65535]),
    "HighBit": ("US", [0, 15, 16, 200, 65535]),
    "PixelRepresentation": ("US", [1, 2, 65535]),
    "SamplesPerPixel": ("US", [0, 3, 4, 65535]),
    "PlanarConfiguration": ("US", [1, 7]),
    "NumberOfFrames": ("IS", [b"0", b"-1", b"2", b"100000", b"abc", b"1.5", b"", b"2147483648"]),
    "PhotometricInterpretation": ("CS", [b"RGB", b"YBR_FULL", b"PALETTE COLOR", b"", b"MONOCHROME1", b"BOGUS"]),
    "PixelSpacing": ("DS", [b"0\\0", b"nan\\1", b"-1\\1", b"1e308\\1e308", b"1", b"a\\b", b"inf\\inf", b"1e-300\\1"]),
    "SliceThickness": ("DS", [b"0", b"-5", b"nan", b"1e308"]),
    "SpacingBetweenSlices": ("DS", [b"0", b"-5", b"nan"]),
    "ImagePositionPatient": ("DS", [b"nan\\nan\\nan", b"inf\\0\\0", b"1\\2", b"1e308\\1e308\\1e308", b"abc", b"",
                                    b"-1e308\\0\\1e308"]),
    "ImageOrientationPatient": ("DS", [b"0\\0\\0\\0\\0\\0", b"1\\0\\0\\1\\0\\0", b"nan\\0\\0\\0\\1\\0",
                                       b"1\\0\\0\\0\\1", b"2\\0\\0\\0\\2\\0", b"1\\1\\1\\1\\1\\1",
                                       b"1e308\\0\\0\\0\\1e308\\0"]),
    "SpecificCharacterSet": ("CS", [b"ISO_IR 999", b"ISO 2022 IR 87", b"\\\\\\", b"GB18030", b"\xff\xfe"]),
    "SeriesInstanceUID": ("UI", [b"../../x", b"", b"1." * 40, b"\xff\xfe", b"/etc/passwd"]),
    "SOPInstanceUID": ("UI", [b"../../x", b"", b"\x00\x00"]),
    "SeriesNumber": ("IS", [b"../1", b"-1", b"99999999999", b"nan"]),
    "RescaleSlope": ("DS", [b"0", b"nan", b"1e308", b"-inf"]),
    "RescaleIntercept": ("DS", [b"nan", b"1e308"]),
    "WindowWidth": ("DS", [b"0", b"nan", b"-1"]),
}
ODD_TEXT = [b"\xff\xfe\x80", b"\x00\x00", b"../../etc", b"\\\\", b"A" * 10000, b"\x1b$B\x1b(B", b"%s%n%x",
            b"\xc3\x28", b"\xed\xa0\x80", b"\r\n\r\n", b"Robert'); DROP TABLE"]
TEXT_FIELDS = {"PatientName": "PN", "SeriesDescription": "LO", "StudyDescription": "LO", "Modality": "CS",
               "PatientID": "LO", "InstitutionName": "LO", "ProtocolName": "LO", "StudyDate": "DA",
               "AccessionNumber": "SH", "ReferringPhysicianName": "PN"}
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2", "1.2.3.4", "",
                     "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99"]


def _raw(ds, keyword: str, vr: str, value) -> None:
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    if isinstance(value, int):
        value = struct.pack("<H", value)
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def mutate_dicom(rng, instance: int) -> tuple:
    with warnings.catch_warnings():  # pydicom warns about the invalid values: they are the point
        warnings.simplefilter("ignore")
        return _mutate_dicom(rng, instance)


def _mutate_dicom(rng, instance: int) -> tuple:
    ds = corpus.valid_dicom_dataset(instance=1 + instance % 7)
    notes = []
    flips = 0
    syntax = None
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.random()
        if kind < 0.55:
            keyword = _pick(rng, list(DICOM_VALUES))
            vr, values = DICOM_VALUES[keyword]
            value = _pick(rng, values)
            _raw(ds, keyword, vr, value)
            notes.append(f"{keyword}={value if isinstance(value, int) else value[:24]!r}")
        elif kind < 0.75:
            keyword = _pick(rng, list(TEXT_FIELDS))
            value = _pick(rng, ODD_TEXT)
            _raw(ds, keyword, TEXT_FIELDS[keyword], value)
            notes.append(f"{keyword}={value[:24]!r}")
        elif kind < 0.82:
            syntax = _pick(rng, TRANSFER_SYNTAXES)
            notes.append(f"TransferSyntaxUID={syntax!r}")
        elif kind < 0.92 and "PixelData" in ds:
            length = len(ds.PixelData)
            new = _pick(rng, [0, 2, length // 2, length - 2, length * 4, length * 100])
            if new == 0:
                del ds.PixelData
            else:
                ds.PixelData = (ds.PixelData * (new // length + 1))[:new]
            notes.append(f"PixelData {new} bytes")
        else:
            flips = int(rng.integers(1, 9))
            notes.append(f"{flips} random bytes after the preamble")
    data = corpus.dicom_bytes(ds)
    if syntax is not None:
        data = corpus.set_transfer_syntax(data, syntax)
    data = bytearray(data)
    for _ in range(flips):
        data[int(rng.integers(132, len(data)))] = int(rng.integers(256))
    return bytes(data), notes


# --- running -------------------------------------------------------------------------------------

def build_cases(fmt: str, count: int, base: Path, sentinel: Path) -> list:
    rng = np.random.default_rng([FUZZ_SEED, ("nifti", "nrrd", "dicom").index(fmt), count])
    folder = base / "files"
    folder.mkdir(parents=True)
    nifti_base = corpus.valid_nifti_bytes((6, 8, 7), (1.0, 1.2, 2.5))
    nrrd_base = corpus.valid_nrrd_bytes((6, 8, 7))
    cases = []
    for index in range(count):
        points_outside = False
        if fmt == "nifti":
            data, suffix, notes = mutate_nifti(rng, nifti_base)
        elif fmt == "nrrd":
            data, notes, points_outside = mutate_nrrd(rng, nrrd_base, sentinel, folder)
            suffix = ".nrrd"
        else:
            data, notes = mutate_dicom(rng, index)
            suffix = ".dcm"
        path = folder / f"{fmt}-{index:05d}{suffix}"
        path.write_bytes(data)
        cases.append({"name": path.name, "path": path, "notes": notes, "points_outside": points_outside})
    return cases


def run_fuzz(fmt: str, count: int, base: Path) -> dict:
    token = f"SENTINEL-{secrets.token_hex(8)}"
    sentinel = base / "secret" / "SENTINEL.raw"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_bytes(corpus.sentinel_content(token, size=6 * 8 * 7 * 2))
    cases = build_cases(fmt, count, base, sentinel)
    groups, folders = [], {}
    for case in cases:
        invocations = [{"id": "info", "argv": ["info", str(case["path"]), "--json"]}]
        folder = base / "out" / case["name"] / "import"
        folder.mkdir(parents=True)
        (folder / "out.nii.gz").write_bytes(PREVIOUS)
        invocations.append({"id": "import", "argv": ["import", str(case["path"]), "-o", str(folder / "out.nii.gz")]})
        folders[case["name"], "import"] = folder
        if fmt == "dicom":
            folder = base / "out" / case["name"] / "import-anonymize"
            folder.mkdir(parents=True)
            (folder / "out.nii.gz").write_bytes(PREVIOUS)
            invocations.append({"id": "import-anonymize", "argv": [
                "import", str(case["path"]), "-o", str(folder / "out.nii.gz"), "--anonymize",
                "--export-dicom", str(folder / "dicom")]})
            folders[case["name"], "import-anonymize"] = folder
        groups.append({"id": case["name"], "invocations": invocations})
    before = {key: driver.snapshot(folder) for key, folder in folders.items()}
    started = time.perf_counter()
    results = driver.run_driver(groups, base / "driver", invocation_timeout_s=INVOCATION_TIMEOUT_S)
    seconds = time.perf_counter() - started

    failures, counts = [], Counter()
    for case in cases:
        for invocation in next(g for g in groups if g["id"] == case["name"])["invocations"]:
            result = results[case["name"], invocation["id"]]
            counts["runs"] += 1
            counts[f"exit {driver.describe_rc(result['rc'])}"] += 1
            err = result.get("stderr") or ""
            if "Traceback" in err:
                counts["tracebacks"] += 1
            if result.get("died"):
                counts["aborts (signal)" if isinstance(result["rc"], int) and result["rc"] < 0 else "died"] += 1
            problems = driver.contract_problems(result, case["name"])
            folder = folders.get((case["name"], invocation["id"]))
            if folder is not None and (result["rc"] == 2 or result.get("died")):
                if driver.snapshot(folder) != before[case["name"], invocation["id"]]:
                    problems.append("refused run changed its outputs")
            if case["points_outside"] and result["rc"] == 0:
                problems.append("a header pointing at data outside its folder was accepted (exit 0)")
            leaked = (token.encode() in (result["stdout"] + err).encode(errors="replace") or
                      (folder is not None and driver.files_containing(folder, token.encode())))
            if leaked:
                problems.append("the sentinel's content appears in an output")
            if problems:
                counts["failing runs"] += 1
                failures.append((case, invocation["id"], result, problems))
    timed = [r for r in results.values() if r.get("seconds") is not None]
    slowest = max(timed, key=lambda r: r["seconds"]) if timed else None
    summary = (f"[fuzz {fmt}] {len(cases)} files, {counts['runs']} runs in {seconds:.1f} s; "
               + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k != "runs")
               + (f"; slowest {slowest['group']} {slowest['id']} {slowest['seconds']} s"
                  + (" (hung)" if slowest.get("hung") else f" (peak {slowest['peak_mb']} MB)") if slowest else ""))
    return {"summary": summary, "failures": failures, "counts": counts}


def report(fmt: str, outcome: dict) -> str:
    """The summary and one example per distinct failure (signature: command + first words)."""
    print("\n" + outcome["summary"])
    seen, lines = Counter(), []
    for case, command, result, problems in outcome["failures"]:
        for problem in problems:
            words = problem.replace(str(Path(case["path"]).parent), "").split()
            signature = (command, " ".join(w for w in words[:8] if not any(ch.isdigit() for ch in w)))
            seen[signature] += 1
            if seen[signature] == 1:
                lines.append(f"{case['name']} [{'; '.join(case['notes'])}] | {command}: {problem[:300]}")
    for line in lines[:40]:
        print("  " + line)
    return outcome["summary"] + "\n" + "\n".join(lines[:40])


@pytest.mark.parametrize("fmt", list(DEFAULT_COUNTS))
def test_fuzz_headers(fmt, tmp_path):
    outcome = run_fuzz(fmt, DEFAULT_COUNTS[fmt], tmp_path)
    message = report(fmt, outcome)
    assert not outcome["failures"], message


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(SLOW_COUNTS))
def test_fuzz_headers_thousands(fmt, tmp_path):
    outcome = run_fuzz(fmt, SLOW_COUNTS[fmt], tmp_path)
    message = report(fmt, outcome)
    assert not outcome["failures"], message


def test_mutants_are_deterministic(tmp_path):
    sentinel = tmp_path / "SENTINEL.raw"
    sentinel.write_bytes(b"x" * 672)
    first = build_cases("dicom", 20, tmp_path / "a", sentinel) + build_cases("nifti", 20, tmp_path / "a2", sentinel)
    again = build_cases("dicom", 20, tmp_path / "b", sentinel) + build_cases("nifti", 20, tmp_path / "b2", sentinel)
    assert [c["path"].read_bytes() for c in first] == [c["path"].read_bytes() for c in again]
    assert [c["notes"] for c in first] == [c["notes"] for c in again]
