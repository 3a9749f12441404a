"""``medanalysis pacs echo|send|find|get``: exchange with a PACS (C-ECHO, C-STORE, C-FIND,
C-GET or C-MOVE). Network faults give one line naming the peer and exit 2."""

from __future__ import annotations

import argparse

from ..cli import EXIT_OK, emit


def register(add) -> None:
    parser = add("pacs", run, "exchange with a PACS: echo, send files, find studies/series, get a study")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    def action(name: str, helpText: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=helpText, description=helpText)
        p.add_argument("--to", required=True, metavar="AET@HOST:PORT", help="the PACS")
        p.add_argument("--aet", default="MEDANALYSIS", metavar="OURS", help="our AE title; default MEDANALYSIS")
        p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                       help="seconds to wait for the PACS (connection and each reply); default 30")
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object")
        return p

    action("echo", "check that the PACS answers (C-ECHO)")
    send = action("send", "store DICOM files and folders on the PACS (C-STORE)")
    send.add_argument("paths", nargs="+", metavar="PATH")
    find = action("find", "list studies and their series (C-FIND, study and series level)")
    find.add_argument("--patient-id", default="", metavar="ID")
    find.add_argument("--study-uid", default="", metavar="UID")
    find.add_argument("--modality", default="", metavar="M")
    get = action("get", "retrieve a study or one series into a folder (C-GET; C-MOVE with --move-port)")
    get.add_argument("study_uid", metavar="STUDY_UID")
    get.add_argument("--series", default="", metavar="UID")
    get.add_argument("-o", "--output", required=True, metavar="DIR")
    get.add_argument("--move-port", type=int, default=None, metavar="PORT",
                     help="C-MOVE to our storage port PORT instead of C-GET (the PACS must know our AE title)")


def run(args) -> int:
    from ..core.errors import InputError
    from ..core.pacs import PacsClient, parse_peer

    if not 0 < args.timeout <= 3600:
        raise InputError("--timeout", f"must be between 0 and 3600 seconds, got {args.timeout}")
    client = PacsClient(parse_peer(args.to), args.aet, args.timeout)
    if args.action == "echo":
        result = client.echo()
        emit(result, args.json, lambda r: f"{r['peer']} answers (C-ECHO success)")
    elif args.action == "send":
        result = client.send(args.paths)
        emit(result, args.json, lambda r: f"stored {r['sent']} file(s) on {r['peer']}")
    elif args.action == "find":
        studies = client.find(args.patient_id, args.study_uid, args.modality)
        emit({"peer": str(client.peer), "studies": studies}, args.json, describe_find)
    else:
        if args.move_port is not None and not 0 < args.move_port < 65536:
            raise InputError("--move-port", f"port {args.move_port} is not between 1 and 65535")
        result = client.get(args.study_uid, args.output, args.series, args.move_port)
        emit(result, args.json, lambda r: f"retrieved {r['received']} instance(s) into {r['folder']} ({r['method']})")
    return EXIT_OK


def describe_find(result: dict) -> str:
    lines = []
    for study in result["studies"]:
        lines.append(f"study {study['study_uid']} {study['study_date']} {study['description']}".rstrip())
        for series in study["series"]:
            lines.append(f"  series {series['series_uid']} {series['modality']} #{series['series_number']} "
                         f"{series['instances'] if series['instances'] is not None else '?'} instance(s) "
                         f"{series['description']}".rstrip())
    return "\n".join(lines) if lines else f"no studies found on {result['peer']}"
