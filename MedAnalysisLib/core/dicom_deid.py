"""De-identification of DICOM data sets: PS3.15 Annex E Basic Application Level Confidentiality
Profile, with the Retain Longitudinal Temporal Information With Modified Dates Option.

The attribute table (which tag gets which action: X remove, Z empty, D dummy, U new UID and
their combinations, repeating groups such as overlays and curves) comes from the maintained
``dicom-anonymizer`` package (Kitware), which transcribes Table E.1-1 of the standard. The
actions are applied here, because the import needs what that package does not do:

* UIDs are replaced by ``2.25.<128-bit number>`` derived with HMAC-SHA-256 from the original
  UID and a secret drawn once per :class:`Deidentifier` (one run): the same original UID maps
  to the same new UID across files, series and studies of the run, so references between
  objects and between a baseline and a follow-up study stay consistent, and nothing links
  back to the original without the secret.
* The patient gets a pseudonymous key (``ANON-`` + 10 base-32 characters, same derivation
  from PatientID + IssuerOfPatientID) written as PatientName and PatientID.
* Dates (DA, and the date part of DT) are shifted back by a per-patient number of days
  (1..3650) so intervals between a patient's studies are kept; the birth date is removed;
  times listed by the profile are removed; DT values keep only their shifted date.
* Private attributes are removed, and any remaining text that contains an identifying
  string from the original (patient name parts, IDs, accession number, institution,
  physician names) is emptied.

Pixel data are not changed: objects with BurnedInAnnotation = YES are reported.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any, Optional

PROFILE_DATABASE = "dicomfields_2026c"
DEIDENTIFICATION_METHOD = ["PS3.15 Annex E Basic Application Confidentiality Profile",
                           "Retain Longitudinal Temporal Info Modified Dates (MedAnalysis)"]
_METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                 ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
_CATEGORIES = (("D_TAGS", "D"), ("Z_TAGS", "Z"), ("X_TAGS", "X"), ("U_TAGS", "U"), ("Z_D_TAGS", "Z/D"),
               ("X_Z_TAGS", "X/Z"), ("X_D_TAGS", "X/D"), ("X_Z_D_TAGS", "X/Z/D"), ("X_Z_U_STAR_TAGS", "X/Z/U*"))
_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "AS"}
_NUMBER_VRS = {"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"}
_META_REMOVE = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
_BIRTH_DATE = 0x00100030
_PATIENT_NAME, _PATIENT_ID = 0x00100010, 0x00100020
_MINIMUM_IDENTIFIER_LENGTH = 3

_table_cache: Optional[tuple] = None


def annex_e_table() -> tuple:
    """(exact {tag int: action}, [(group, element, group mask, element mask, action)]) of Table E.1-1."""
    global _table_cache
    if _table_cache is None:
        try:
            from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
        except ImportError as error:  # pragma: no cover - declared dependency
            raise RuntimeError("de-identification needs the 'dicom-anonymizer' package "
                               "(pip install dicom-anonymizer)") from error
        tables = dicom_anonymization_database_selector(PROFILE_DATABASE)
        exact, masked = {}, []
        for category, action in _CATEGORIES:  # later categories win, as in dicom-anonymizer
            for entry in tables[category]:
                if len(entry) == 2:
                    exact[(entry[0] << 16) | entry[1]] = action
                else:
                    masked.append((entry[0], entry[1], entry[2], entry[3], action))
        _table_cache = (exact, masked)
    return _table_cache


def profile_action(tag: int) -> Optional[str]:
    """Annex E action code for a tag ('X', 'Z', 'D', 'U', 'X/Z', ...), None when not listed."""
    exact, masked = annex_e_table()
    action = exact.get(int(tag))
    if action is not None:
        return action
    group, element = int(tag) >> 16, int(tag) & 0xFFFF
    for g, e, gmask, emask, code in masked:
        if group & gmask == g & gmask and element & emask == e & emask:
            return code
    return None


class Deidentifier:
    """Applies the profile with run-consistent pseudonyms; one instance = one run.

    Args:
        secret: key of the pseudonym derivation; random (per run) when not given. Give the same
            secret to keep pseudonyms stable across runs (keep it as private as the data).
    """

    def __init__(self, secret: Optional[bytes] = None):
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.warnings: list = []

    @classmethod
    def from_key_file(cls, path: "str | os.PathLike", create: bool = False) -> "Deidentifier":
        """A de-identifier whose pseudonyms and UID map come from a key file (64 hex characters).

        Give the same key file to ``import --anonymize`` and ``export-dicom --anonymize`` so that
        a DICOM SEG or SR attaches to the de-identified series. With ``create``, a missing file is
        made with a new random key, readable by its owner only.
        """
        from .errors import InputError

        path = Path(path)
        if not path.exists():
            if not create:
                raise InputError(path, "de-identification key file does not exist (import --anonymize "
                                       "--deid-key FILE creates it)")
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(secrets.token_hex(32) + "\n")
            except OSError as error:
                raise InputError(path, f"cannot create the de-identification key file ({error.strerror})") from None
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except OSError as error:
            raise InputError(path, f"cannot read the de-identification key file ({error.strerror})") from None
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise InputError(path, "not a de-identification key file (64 hexadecimal characters expected)")
        return cls(bytes.fromhex(text))

    # -- pseudonyms ------------------------------------------------------------------------------
    def _digest(self, *parts: str) -> bytes:
        return hmac.new(self._secret, "\x1f".join(parts).encode("utf-8", "replace"), hashlib.sha256).digest()

    def map_uid(self, uid: str) -> str:
        """Run-consistent replacement of a UID (``2.25.`` + a 128-bit number, at most 44 characters)."""
        uid = str(uid).strip().rstrip("\x00")
        if not uid:
            return uid
        return "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))

    @staticmethod
    def patient_identity(dataset) -> str:
        """Original identity string of a data set's patient (never shown; input to the pseudonyms)."""
        patient_id = str(dataset.get("PatientID", "") or "").strip()
        issuer = str(dataset.get("IssuerOfPatientID", "") or "").strip()
        if patient_id:
            return f"id:{patient_id}^{issuer}"
        name = str(dataset.get("PatientName", "") or "").strip()
        birth = str(dataset.get("PatientBirthDate", "") or "").strip()
        if name:
            return f"name:{name}^{birth}"
        return f"study:{dataset.get('StudyInstanceUID', '')}"

    def patient_key(self, dataset) -> str:
        """Pseudonymous patient key, the same for every object of one patient within the run."""
        digest = self._digest("patient", self.patient_identity(dataset))
        return "ANON-" + base64.b32encode(digest[:10]).decode("ascii")[:10]

    def date_shift_days(self, dataset) -> int:
        """Days the patient's dates move back (1..3650), the same for all of the patient's studies."""
        digest = self._digest("dates", self.patient_identity(dataset))
        return 1 + int.from_bytes(digest[:4], "big") % 3650

    @staticmethod
    def shift_date(value: str, days: int) -> str:
        """YYYYMMDD moved back by ``days``; '' when the value is not a full date."""
        text = str(value).strip()
        match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", text[:8]) if len(text) >= 8 else None
        if not match:
            return ""
        try:
            date = datetime.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        except ValueError:
            return ""
        shifted = date - datetime.timedelta(days=days)
        return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}" if shifted.year >= 1 else ""

    # -- the profile -----------------------------------------------------------------------------
    def deidentify(self, dataset, burned_in_ok: bool = True) -> list:
        """De-identify ``dataset`` in place (its file meta too); returns warnings for the user."""
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        warnings = []
        if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
            warnings.append("BurnedInAnnotation is YES: the pixels may show identifying text, which "
                            "de-identification does not remove")
        if str(dataset.get("RecognizableVisualFeatures", "")).upper() == "YES":
            warnings.append("RecognizableVisualFeatures is YES: the pixels may show the patient's face")
        key = self.patient_key(dataset)
        days = self.date_shift_days(dataset)
        identifiers = self._identifying_strings(dataset)
        self._clean(dataset, key, days, identifiers)
        dataset.PatientName = key
        dataset.PatientID = key
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = DEIDENTIFICATION_METHOD
        codes = Sequence()
        for value, meaning in _METHOD_CODES:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        dataset.DeidentificationMethodCodeSequence = codes
        dataset.LongitudinalTemporalInformationModified = "MODIFIED"
        meta = getattr(dataset, "file_meta", None)
        if meta is not None:
            for tag in _META_REMOVE:
                if tag in meta:
                    del meta[tag]
            if "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = self.map_uid(meta.MediaStorageSOPInstanceUID)
        self.warnings.extend(w for w in warnings if w not in self.warnings)
        return warnings

    def _identifying_strings(self, dataset) -> list:
        """Original strings that must not survive anywhere in free text (longest first)."""
        values = set()
        for keyword in ("PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName", "StudyID",
                        "IssuerOfPatientID", "PatientAddress", "PatientTelephoneNumbers"):
            value = dataset.get(keyword)
            if value:
                values.update(str(v) for v in (value if isinstance(value, (list, tuple)) or
                                               type(value).__name__ == "MultiValue" else [value]))
        for keyword in ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                        "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
                        "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord"):
            value = dataset.get(keyword)
            if not value:
                continue
            for name in (value if type(value).__name__ == "MultiValue" or isinstance(value, list) else [value]):
                values.add(str(name))
                values.update(re.split(r"[\^=\s,]+", str(name)))
        cleaned = {v.strip() for v in values if v and len(v.strip()) >= _MINIMUM_IDENTIFIER_LENGTH}
        return sorted(cleaned, key=len, reverse=True)

    def _clean(self, dataset, key: str, days: int, identifiers: list) -> None:
        from pydicom.sequence import Sequence

        for tag in list(dataset.keys()):
            element = dataset[tag]
            if element.tag.is_private:
                del dataset[tag]
                continue
            action = profile_action(element.tag)
            vr = element.VR
            if int(element.tag) in (_PATIENT_NAME, _PATIENT_ID):
                continue  # replaced by the pseudonymous key afterwards
            if vr == "SQ":
                if action in ("X", "X/Z", "X/D", "X/Z/D", "D"):
                    del dataset[tag]
                elif action in ("Z", "Z/D"):
                    element.value = Sequence()
                elif action == "X/Z/U*":  # references: keep only the (replaced) UIDs and numbers
                    for item in element.value or []:
                        self._keep_references(item)
                else:  # not listed: keep the items, cleaned recursively
                    for item in element.value or []:
                        self._clean(item, key, days, identifiers)
                continue
            if vr in ("DA", "DT") and int(element.tag) != _BIRTH_DATE:
                self._shift(element, days)
                continue
            if action is None:
                self._scrub_text(element, identifiers)
                continue
            if action == "U" or (vr == "UI" and action in ("D", "X/D", "Z/D", "X/Z/D", "X/Z/U*")):
                self._replace_uids(element)
            elif action == "X":
                del dataset[tag]
            elif action in ("Z", "Z/D", "X/Z", "X/Z/D", "X/Z/U*"):
                self._empty(element)
            else:  # D, X/D: a dummy value of the same VR
                self._dummy(element)

    def _keep_references(self, item) -> None:
        """Inside reference sequences (X/Z/U*): instance UIDs replaced, class UIDs and integers
        kept, everything else removed."""
        for tag in list(item.keys()):
            element = item[tag]
            if element.tag.is_private:
                del item[tag]
            elif element.VR == "SQ":
                for child in element.value or []:
                    self._keep_references(child)
            elif element.VR == "UI":
                if not element.keyword.endswith("ClassUID") and element.keyword != "TransferSyntaxUID":
                    self._replace_uids(element)
            elif element.VR not in ("IS", "US", "UL", "SS", "SL"):
                del item[tag]

    def _replace_uids(self, element) -> None:
        value = element.value
        if value is None or value == "":
            return
        if isinstance(value, (str, bytes)):
            element.value = self.map_uid(value.decode() if isinstance(value, bytes) else value)
        else:
            element.value = [self.map_uid(v) for v in value]

    def _shift(self, element, days: int) -> None:
        value = element.value
        if value is None or value == "":
            return
        values = value if type(value).__name__ == "MultiValue" or isinstance(value, list) else [value]
        shifted = [self.shift_date(str(v), days) for v in values]
        shifted = [v for v in shifted if v]
        if not shifted:
            element.value = ""
        else:
            element.value = shifted if len(shifted) > 1 else shifted[0]

    @staticmethod
    def _empty(element) -> None:
        vr = element.VR
        if vr in _NUMBER_VRS:
            element.value = None
        elif vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
            element.value = b""
        else:
            element.value = ""

    @staticmethod
    def _dummy(element) -> None:
        vr = element.VR
        if vr in ("DS", "IS"):
            element.value = "0"
        elif vr in _NUMBER_VRS:
            element.value = 0
        elif vr == "TM":
            element.value = "000000"
        elif vr == "AS":
            element.value = "000Y"
        elif vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN", "UR"):
            element.value = b"" if vr != "UR" else ""
        else:
            element.value = "ANONYMIZED"

    @staticmethod
    def _scrub_text(element, identifiers: list) -> None:
        if element.VR not in _TEXT_VRS or not identifiers or element.value in (None, ""):
            return
        text = str(element.value).upper()
        if element.VR == "PN" or any(identifier.upper() in text for identifier in identifiers):
            element.value = ""


def deidentified_copy(dataset, deidentifier: Deidentifier) -> Any:
    """A de-identified deep copy (the original is left unchanged)."""
    import copy

    clone = copy.deepcopy(dataset)
    deidentifier.deidentify(clone)
    return clone
