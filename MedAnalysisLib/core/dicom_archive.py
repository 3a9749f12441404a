"""Where DICOM files come from: a folder (recursive), a ZIP archive, a DICOMDIR or one file.

ZIP archives are extracted into a temporary folder that is always removed when the
``with`` block ends (success, error or cancel). Extraction is refused as a whole when an
entry could land outside that folder (absolute path, ``..`` component, drive letter,
symbolic link: "zip-slip"), is encrypted, or when the archive exceeds the size, entry-count
or compression-ratio limits that stop a zip bomb. Sizes are counted on the bytes actually
inflated, not on what the archive's directory claims.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

from .errors import InputError
from .progress import CancelToken, ProgressCallback, ProgressReporter

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """Limits that refuse an archive before or while it is extracted.

    Attributes:
        max_total_bytes: total uncompressed size of all entries (bytes).
        max_entries: number of entries in the archive.
        max_ratio: uncompressed / compressed size, checked for entries and for the whole
            archive once more than ``ratio_floor_bytes`` are involved (DICOM rarely
            compresses better than ~20:1; zip bombs reach 1000:1 and more).
        ratio_floor_bytes: below this uncompressed size the ratio is not checked.
    """

    max_total_bytes: int = 32 * 1024 ** 3
    max_entries: int = 200_000
    max_ratio: float = 250.0
    ratio_floor_bytes: int = 4 * 1024 ** 2


@dataclasses.dataclass
class SourceFiles:
    """Candidate files of a source (not yet known to be DICOM).

    Attributes:
        source: the path as given.
        kind: 'folder', 'zip', 'dicomdir' or 'file'.
        root: folder that relative names in reports are computed from.
        files: candidate files, sorted.
    """

    source: Path
    kind: str
    root: Path
    files: list

    def relative(self, path: "str | os.PathLike") -> str:
        """Name of a file relative to the source (for messages; never a temporary path)."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return Path(path).name


def is_zip_archive(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    try:
        with open(path, "rb") as stream:
            return stream.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def is_dicomdir(path: Path) -> bool:
    """True for a DICOMDIR file (by name or by its Media Storage SOP Class)."""
    if path.name.upper() == "DICOMDIR":
        return True
    try:
        with open(path, "rb") as stream:
            head = stream.read(512)
    except OSError:
        return False
    return head[128:132] == b"DICM" and DICOMDIR_SOP_CLASS.encode() in head


@contextlib.contextmanager
def open_source(source: "str | os.PathLike", limits: ArchiveLimits = ArchiveLimits(),
                progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None) -> Iterator[SourceFiles]:
    """Yield the candidate files of a folder, ZIP archive, DICOMDIR or single file.

    Raises:
        InputError: missing source, empty folder, unreadable file, unsafe or oversized archive.
    """
    source = Path(source)
    report = ProgressReporter(progress, cancel)
    if not source.exists():
        raise InputError(source, "does not exist")
    if source.is_dir():
        if not os.access(source, os.R_OK | os.X_OK):
            raise InputError(source, "permission denied (folder is not readable)")
        files = list_folder(source, report)
        if not files:
            raise InputError(source, "folder is empty")
        yield SourceFiles(source, "folder", source, files)
        return
    if not os.access(source, os.R_OK):
        raise InputError(source, "permission denied (file is not readable)")
    if source.stat().st_size == 0:
        raise InputError(source, "file is empty")
    if is_zip_archive(source):
        folder = Path(tempfile.mkdtemp(prefix="medanalysis-zip-"))
        try:
            extract_zip(source, folder, limits, report)
            files = list_folder(folder, report)
            if not files:
                raise InputError(source, "archive holds no files")
            yield SourceFiles(source, "zip", folder, files)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    if is_dicomdir(source):
        yield SourceFiles(source, "dicomdir", source.parent, dicomdir_files(source))
        return
    yield SourceFiles(source, "file", source.parent, [source])


def list_folder(folder: Path, report: Optional[ProgressReporter] = None) -> list:
    """Regular files under ``folder`` (recursive, symbolic links to folders not followed), sorted."""
    files = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories.sort()
        if report is not None:
            report(0.0, f"listing {len(files)} files")
        for name in sorted(names):
            path = Path(directory) / name
            if path.is_file():
                files.append(path)
    return files


def _unsafe_member(info: zipfile.ZipInfo) -> Optional[str]:
    name = info.filename
    if "\x00" in name:
        return "has a NUL byte in its name"
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or PurePosixPath(normalized).is_absolute():
        return "has an absolute path"
    if len(normalized) > 1 and normalized[1] == ":":
        return "has a drive letter"
    if any(part == ".." for part in normalized.split("/")):
        return "has a '..' component (zip-slip)"
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        return "is a symbolic link"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def extract_zip(archive: Path, destination: Path, limits: ArchiveLimits = ArchiveLimits(),
                report: Optional[ProgressReporter] = None) -> int:
    """Extract ``archive`` into ``destination`` after checking every entry; returns bytes written.

    The archive is refused as a whole (InputError) before anything is written when an entry
    name is unsafe or the declared sizes exceed the limits, and extraction stops (InputError)
    as soon as the inflated bytes exceed the limits. ``destination`` is then left for the
    caller to remove (``open_source`` always does).
    """
    report = report or ProgressReporter()
    try:
        zipped = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(archive, f"not a readable ZIP archive ({error})") from None
    with zipped:
        members = zipped.infolist()
        if len(members) > limits.max_entries:
            raise InputError(archive, f"archive has {len(members)} entries, more than the limit of "
                                      f"{limits.max_entries}")
        declared = 0
        compressed = 0
        for info in members:
            problem = _unsafe_member(info)
            if problem:
                raise InputError(archive, f"refused: entry '{info.filename}' {problem}")
            declared += info.file_size
            compressed += info.compress_size
        _check_size(archive, declared, compressed, limits, "declares")
        root = destination.resolve()
        written = 0
        for index, info in enumerate(members):
            report(index / max(len(members), 1), f"extracting {index + 1}/{len(members)}")
            target = (root / info.filename.replace("\\", "/")).resolve()
            if root != target and root not in target.parents:
                raise InputError(archive, f"refused: entry '{info.filename}' would be written outside the "
                                          "extraction folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            entry_written = 0
            try:
                with zipped.open(info) as source, open(target, "xb") as sink:
                    while True:
                        chunk = source.read(1 << 20)
                        if not chunk:
                            break
                        entry_written += len(chunk)
                        written += len(chunk)
                        if entry_written > info.file_size:
                            raise InputError(archive, f"refused: entry '{info.filename}' inflates beyond its "
                                                      "declared size")
                        _check_size(archive, written, compressed, limits, "inflates to")
                        if info.compress_size and entry_written > limits.ratio_floor_bytes \
                                and entry_written / info.compress_size > limits.max_ratio:
                            raise InputError(archive, f"refused: entry '{info.filename}' has a compression "
                                                      f"ratio above {limits.max_ratio:g}:1 (zip bomb?)")
                        sink.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError) as error:
                if isinstance(error, FileExistsError):
                    raise InputError(archive, f"refused: entry '{info.filename}' appears twice") from None
                raise InputError(archive, f"entry '{info.filename}' cannot be extracted ({error})") from None
    return written


def _check_size(archive: Path, total: int, compressed: int, limits: ArchiveLimits, verb: str) -> None:
    if total > limits.max_total_bytes:
        raise InputError(archive, f"refused: archive {verb} {total} bytes, more than the limit of "
                                  f"{limits.max_total_bytes} bytes")
    if total > limits.ratio_floor_bytes and compressed and total / compressed > limits.max_ratio:
        raise InputError(archive, f"refused: archive {verb} {total} bytes from {compressed} compressed bytes, "
                                  f"a ratio above {limits.max_ratio:g}:1 (zip bomb?)")


def dicomdir_files(path: Path) -> list:
    """Files a DICOMDIR references (only those inside its folder), sorted."""
    import pydicom

    try:
        dicomdir = pydicom.dcmread(path)
    except Exception as error:  # noqa: BLE001 - any parse failure is bad input
        raise InputError(path, f"not a readable DICOMDIR ({type(error).__name__})") from None
    root = path.parent.resolve()
    files = []
    for record in dicomdir.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        target = (root.joinpath(*[str(p) for p in parts])).resolve()
        if root not in target.parents:
            raise InputError(path, f"refused: DICOMDIR references a file outside its folder ({'/'.join(parts)})")
        if not target.is_file():
            # File IDs are upper case on media; the copy may have changed the case.
            matches = [p for p in target.parent.glob("*") if p.name.upper() == target.name.upper()] \
                if target.parent.is_dir() else []
            if not matches:
                continue
            target = matches[0]
        files.append(target)
    if not files:
        raise InputError(path, "DICOMDIR references no existing files")
    return sorted(set(files))
