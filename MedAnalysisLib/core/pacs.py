"""Exchange with a PACS (DICOM networking through pynetdicom): C-ECHO, C-STORE of files and
folders, C-FIND at study and series level, C-GET (or C-MOVE to a local storage port) of a study
or series into a folder.

Every network fault (connection refused, timeout, association rejected or aborted, a failed
status or sub-operation) becomes an :class:`InputError` naming the peer and what happened;
a retrieval that did not bring back every instance is refused (its files are not kept), never
silently accepted. Patient names and IDs are never printed or logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .errors import InputError

DEFAULT_AET = "MEDANALYSIS"
TIMEOUT_S = 30.0
_AET = re.compile(r"^[\x20-\x7e]{1,16}$")


@dataclasses.dataclass(frozen=True)
class Peer:
    """A remote application entity: AE title, host, port."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """``AET@HOST:PORT`` (IPv6 host in brackets)."""
    match = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d{1,5})", text or "")
    if not match:
        raise InputError("peer", f"'{text}' is not AET@HOST:PORT")
    aet, host, port = match.group("aet").strip(), match.group("host").strip("[]"), int(match.group("port"))
    check_aet(aet, "--to")
    if not 0 < port < 65536:
        raise InputError("peer", f"port {port} is not between 1 and 65535")
    return Peer(aet, host, port)


def check_aet(aet: str, subject: str = "--aet") -> str:
    if not _AET.match(aet or "") or aet.strip() == "" or "\\" in aet:
        raise InputError(subject, f"'{aet}' is not an AE title (1 to 16 printable characters, no backslash)")
    return aet


def _quiet_pynetdicom() -> None:
    for name in ("pynetdicom", "pynetdicom.assoc", "pynetdicom.acse", "pynetdicom.dul", "pynetdicom.events"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# Storage SOP classes asked for first when retrieving (at most 128 presentation contexts in all)
_RETRIEVE_FIRST = ("CTImageStorage", "MRImageStorage", "EnhancedMRImageStorage", "EnhancedCTImageStorage",
                   "SegmentationStorage", "Comprehensive3DSRStorage", "ComprehensiveSRStorage", "EnhancedSRStorage",
                   "SecondaryCaptureImageStorage", "PositronEmissionTomographyImageStorage",
                   "EnhancedPETImageStorage", "UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage",
                   "DigitalXRayImageStorageForPresentation", "ComputedRadiographyImageStorage",
                   "NuclearMedicineImageStorage", "RTStructureSetStorage", "LegacyConvertedEnhancedMRImageStorage",
                   "LegacyConvertedEnhancedCTImageStorage", "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
                   "MultiFrameGrayscaleByteSecondaryCaptureImageStorage")


class PacsClient:
    """One remote PACS; each operation opens and closes its own association."""

    def __init__(self, peer: Peer, aet: str = DEFAULT_AET, timeout_s: float = TIMEOUT_S):
        self.peer, self.aet, self.timeout_s = peer, check_aet(aet), float(timeout_s)
        _quiet_pynetdicom()

    def _ae(self):
        from pynetdicom import AE

        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        return ae

    def _reachable(self, what: str) -> None:
        """A plain TCP connection first, so that refused and unreachable are told apart."""
        try:
            with socket.create_connection((self.peer.host, self.peer.port), timeout=self.timeout_s):
                pass
        except ConnectionRefusedError:
            raise InputError(str(self.peer), f"connection refused for {what} (nothing listens on port "
                                             f"{self.peer.port})") from None
        except socket.timeout:
            raise InputError(str(self.peer), f"no answer within {self.timeout_s:g} s for {what}") from None
        except OSError as error:
            raise InputError(str(self.peer), f"cannot reach the host for {what} ({error.strerror or error})") \
                from None

    @contextlib.contextmanager
    def _association(self, ae, what: str, **kwargs) -> Iterator:
        self._reachable(what)
        try:
            assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.aet, **kwargs)
        except (OSError, ValueError) as error:
            raise InputError(str(self.peer), f"cannot connect for {what} ({error})") from None
        if not assoc.is_established:
            if assoc.is_rejected:
                raise InputError(str(self.peer), f"association rejected for {what} (wrong AE title, or we are "
                                                 "not allowed to connect)")
            if assoc.is_aborted:
                raise InputError(str(self.peer), f"association aborted for {what}")
            raise InputError(str(self.peer), f"cannot connect for {what} (refused, unreachable or timed out)")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _check_alive(self, assoc, what: str) -> None:
        if assoc.is_aborted or not assoc.is_established:
            raise InputError(str(self.peer), f"connection lost during {what}")

    # -- operations ------------------------------------------------------------------------------
    def echo(self) -> dict:
        from pynetdicom.sop_class import Verification

        ae = self._ae()
        ae.add_requested_context(Verification)
        with self._association(ae, "C-ECHO") as assoc:
            status = assoc.send_c_echo()
            self._check_alive(assoc, "C-ECHO")
        code = getattr(status, "Status", None)
        if code != 0x0000:
            raise InputError(str(self.peer), f"C-ECHO failed (status {_hex(code)})")
        return {"peer": str(self.peer), "status": "success"}

    def send(self, paths: Sequence["str | os.PathLike"]) -> dict:
        """C-STORE every DICOM file of ``paths`` (files or folders, searched recursively)."""
        import pydicom

        files = list(_dicom_files(paths))
        if not files:
            raise InputError(", ".join(os.fspath(p) for p in paths), "no DICOM files to send")
        datasets = []
        for path in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    datasets.append((path, pydicom.dcmread(path)))
            except Exception as error:  # noqa: BLE001 - pydicom raises many types on malformed input
                raise InputError(path, f"unreadable DICOM file ({type(error).__name__})") from None
        contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets
                           if "SOPClassUID" in ds and "TransferSyntaxUID" in getattr(ds, "file_meta", {})})
        missing = [p for p, ds in datasets if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds]
        if missing:
            raise InputError(missing[0], "DICOM file without SOP Class or Instance UID cannot be stored")
        if len({c[0] for c in contexts}) > 127:
            raise InputError(os.fspath(paths[0]), "more than 127 kinds of DICOM objects in one send")
        ae = self._ae()
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        by_class: dict = {}
        for sop_class, syntax in contexts:
            by_class.setdefault(sop_class, {ImplicitVRLittleEndian, ExplicitVRLittleEndian}).add(syntax)
        for sop_class, syntaxes in by_class.items():
            ae.add_requested_context(sop_class, sorted(syntaxes))
        sent, failed = 0, []
        with self._association(ae, "C-STORE") as assoc:
            for path, dataset in datasets:
                status = assoc.send_c_store(dataset)
                self._check_alive(assoc, "C-STORE")
                code = getattr(status, "Status", None)
                if code is not None and (code == 0x0000 or (code & 0xF000) == 0xB000):
                    sent += 1
                else:
                    failed.append((path, code))
        if failed:
            path, code = failed[0]
            raise InputError(str(self.peer), f"C-STORE failed for {len(failed)} of {len(datasets)} file(s) "
                                             f"(first: {Path(path).name}, status {_hex(code)}); {sent} stored")
        return {"peer": str(self.peer), "sent": sent, "files": [os.fspath(p) for p in files]}

    def find(self, patient_id: str = "", study_uid: str = "", modality: str = "") -> list:
        """Studies (and their series) matching the filters: UIDs, dates, descriptions, counts."""
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FindModel

        ae = self._ae()
        ae.add_requested_context(FindModel)
        studies = []
        with self._association(ae, "C-FIND") as assoc:
            query = _query("STUDY", StudyInstanceUID=study_uid or "", PatientID=patient_id or "", StudyDate="",
                           StudyDescription="", ModalitiesInStudy="", NumberOfStudyRelatedInstances="")
            seen: dict = {}
            for identifier in self._responses(assoc.send_c_find(query, FindModel), assoc, "C-FIND (study)"):
                uid = str(identifier.get("StudyInstanceUID", ""))
                if uid and uid not in seen:  # some archives answer once per instance: one entry per study
                    seen[uid] = {"study_uid": uid, "study_date": str(identifier.get("StudyDate", "") or ""),
                                 "description": str(identifier.get("StudyDescription", "") or ""), "series": []}
            studies = list(seen.values())
            for study in studies:
                query = _query("SERIES", StudyInstanceUID=study["study_uid"], SeriesInstanceUID="",
                               Modality=modality or "", SeriesNumber="", SeriesDescription="",
                               NumberOfSeriesRelatedInstances="")
                series: dict = {}
                for identifier in self._responses(assoc.send_c_find(query, FindModel), assoc, "C-FIND (series)"):
                    uid = str(identifier.get("SeriesInstanceUID", ""))
                    entry = series.get(uid)
                    if entry is None:
                        entry = series[uid] = {
                            "series_uid": uid, "modality": str(identifier.get("Modality", "") or ""),
                            "series_number": _int_or_none(identifier.get("SeriesNumber")),
                            "description": str(identifier.get("SeriesDescription", "") or ""),
                            "instances": _int_or_none(identifier.get("NumberOfSeriesRelatedInstances")),
                            "_answers": 0}
                    entry["_answers"] += 1
                for entry in series.values():
                    answers = entry.pop("_answers")
                    if entry["instances"] is None and answers > 1:
                        entry["instances"] = answers  # answered once per instance
                study["series"] = list(series.values())
        if modality:
            studies = [s for s in studies if s["series"]]
        return studies

    def _responses(self, responses, assoc, what: str) -> Iterator:
        for status, identifier in responses:
            code = getattr(status, "Status", None)
            if code is None:
                self._check_alive(assoc, what)
                raise InputError(str(self.peer), f"{what}: no response (timed out or connection lost)")
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    yield identifier
            elif code != 0x0000:
                raise InputError(str(self.peer), f"{what} failed (status {_hex(code)})")

    def get(self, study_uid: str, out_dir: "str | os.PathLike", series_uid: str = "",
            move_port: Optional[int] = None) -> dict:
        """Retrieve a study (or one series) into ``out_dir`` (files named by SOP Instance UID).

        C-GET by default; with ``move_port`` a C-MOVE to our own storage port (the PACS must know
        our AE title at this host and port). All or nothing: the files are kept only when every
        instance came back.
        """
        if not study_uid:
            raise InputError("STUDY_UID", "a study UID is required (pacs find lists them)")
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(out_dir, "output exists and is not a folder")
        query = (_query("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid) if series_uid
                 else _query("STUDY", StudyInstanceUID=study_uid))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.part", dir=out_dir.parent))
        try:
            received = []

            def store(event):
                dataset = event.dataset
                dataset.file_meta = event.file_meta
                name = _safe_uid(str(dataset.SOPInstanceUID)) + ".dcm"
                dataset.save_as(staging / name, enforce_file_format=True)
                received.append(name)
                return 0x0000

            if move_port is None:
                final = self._get(query, store)
            else:
                final = self._move(query, store, move_port)
            completed = _int_or_none(final.get("NumberOfCompletedSuboperations")) if final is not None else None
            failed = _int_or_none(final.get("NumberOfFailedSuboperations")) if final is not None else None
            warning = _int_or_none(final.get("NumberOfWarningSuboperations")) if final is not None else None
            code = getattr(final, "Status", None) if final is not None else None
            if code is None:
                raise InputError(str(self.peer), "retrieve: no final response (timed out or connection lost); "
                                                 f"{len(received)} instance(s) arrived, none kept")
            if code != 0x0000 or failed:
                raise InputError(str(self.peer), f"retrieve incomplete (status {_hex(code)}: {completed or 0} "
                                                 f"completed, {failed or 0} failed, {warning or 0} warning); "
                                                 f"{len(received)} instance(s) arrived, none kept")
            if not received:
                raise InputError(str(self.peer), f"no instances found for study {study_uid}"
                                                 + (f" series {series_uid}" if series_uid else ""))
            out_dir.mkdir(parents=True, exist_ok=True)
            clashes = [name for name in received if (out_dir / name).exists()]
            if clashes:
                raise InputError(out_dir / clashes[0], "already exists: retrieved files never replace files")
            for name in received:
                os.replace(staging / name, out_dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {"peer": str(self.peer), "study_uid": study_uid, "series_uid": series_uid or None,
                "received": len(received), "folder": os.fspath(out_dir),
                "method": "C-GET" if move_port is None else "C-MOVE"}

    def _storage_contexts(self) -> list:
        from pynetdicom import StoragePresentationContexts, sop_class

        first = [getattr(sop_class, name) for name in _RETRIEVE_FIRST if hasattr(sop_class, name)]
        rest = [cx.abstract_syntax for cx in StoragePresentationContexts if cx.abstract_syntax not in first]
        return (first + rest)[:126]

    def _get(self, query, store):
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GetModel

        ae = self._ae()
        ae.add_requested_context(GetModel)
        storage = self._storage_contexts()
        for uid in storage:
            ae.add_requested_context(uid)
        roles = [build_role(uid, scp_role=True) for uid in storage]
        final = None
        with self._association(ae, "C-GET", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)]) as assoc:
            for status, _ in assoc.send_c_get(query, GetModel):
                final = status if status is not None and "Status" in status else None  # None: lost
            self._check_alive(assoc, "C-GET")
        return final

    def _move(self, query, store, port: int):
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MoveModel

        scp = AE(ae_title=self.aet)
        for uid in self._storage_contexts():
            scp.add_supported_context(uid)
        try:
            server = scp.start_server(("", int(port)), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
        except OSError as error:
            raise InputError("move port", f"cannot listen on port {port} ({error.strerror})") from None
        try:
            ae = self._ae()
            ae.add_requested_context(MoveModel)
            final = None
            with self._association(ae, "C-MOVE") as assoc:
                for status, _ in assoc.send_c_move(query, self.aet, MoveModel):
                    final = status if status is not None and "Status" in status else None
                self._check_alive(assoc, "C-MOVE")
            return final
        finally:
            server.shutdown()


def _query(level: str, **keys):
    """A C-FIND/C-GET identifier: the level and the keys (empty values ask the PACS to return them)."""
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return query


def _dicom_files(paths: Sequence["str | os.PathLike"]) -> Iterator[Path]:
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise InputError(path, "does not exist")
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            try:
                with open(candidate, "rb") as handle:
                    head = handle.read(132)
            except OSError as error:
                raise InputError(candidate, f"cannot be read ({error.strerror})") from None
            if head[128:132] == b"DICM" and candidate.name.upper() != "DICOMDIR":
                yield candidate


def _hex(code) -> str:
    return f"0x{code:04X}" if isinstance(code, int) else "none"


def _int_or_none(value) -> Optional[int]:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _safe_uid(uid: str) -> str:
    return re.sub(r"[^0-9.]", "_", uid)[:64] or "instance"


__all__ = ["Peer", "PacsClient", "parse_peer", "check_aet", "DEFAULT_AET"]
