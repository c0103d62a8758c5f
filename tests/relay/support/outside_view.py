#!/usr/bin/env python3
"""The outside view of delivered copies: what a third-party mail library shows a reader.

mailveil's privacy promise is about bytes: no delivered copy shows, under any reading, the
address of anyone who must not see it. The relay checks its copies with its own readings, and
the Rust tests add an independent oracle (`mailveil::fuzzing::oracle`). This helper is a third
opinion that shares no code with either: Python's standard `email` package with
`policy=email.policy.default` (the modern, decoding policy mail programs written in Python use)
reads each copy and we look at everything it would show a user.

Usage (from the Rust tests in tests/privacy_leaks.rs, once per batch to keep them fast):

    python3 tests/support/outside_view.py JOBS.json

JOBS.json is a list of jobs, one per delivered copy:

    [{"file": "/tmp/.../outbox/01J....eml", "forbidden": ["bob@y.test", "cat@z.test"]}, ...]

`forbidden` lists the private addresses that copy must not show (every private address of the
message except the copy's own recipient). For each copy, every text below is searched for each
forbidden address, case-insensitively, as it is and after NFKC normalisation (fullwidth `＠`
and letters render as their plain forms on screen):

- each header the message exposes, `msg.items()`: the field name and `str(value)` (RFC 2047
  decoded, unfolded), and the raw value as the parser split it (`msg.raw_items()`);
- for address headers (`value.addresses`, `value.groups`): each mailbox's display name and
  addr_spec, and each group's display name;
- every MIME part found by `msg.walk()` (nested `message/rfc822` parts included): the part's
  headers as above, its file name, and its decoded content (`get_content()`: base64 and
  quoted-printable undone, charset applied); HTML also as a browser renders its text: tags
  and comments removed, character references unescaped.

Output (stdout) is one JSON list of findings, empty when every copy is clean:

    [{"file": "...", "address": "bob@y.test", "where": "header Reply-To", "text": "..."}]

A copy the library cannot read at all is itself a finding (`"where": "unreadable"`), so a
parser failure never looks like a clean copy. Exit status: 0 when the jobs were processed
(findings or not), 2 on a usage error.
"""

import email
import email.policy
import html
import json
import re
import sys
import unicodedata


COMMENT = re.compile(r"<!--.*?-->", re.S)
TAG = re.compile(r"<[^>]*>")


def readings(text):
    """The text as a reader may see it: lower case, and NFKC-normalised lower case."""
    lower = text.lower()
    nfkc = unicodedata.normalize("NFKC", text).lower()
    return [lower] if nfkc == lower else [lower, nfkc]


def header_texts(part, label):
    """(where, text) for every header of one message or part."""
    out = []
    try:
        items = part.items()
    except Exception as exc:  # noqa: BLE001 - a failure is reported, not hidden
        return [(f"{label}headers unreadable", repr(exc))]
    for name, value in items:
        where = f"{label}header {name}"
        try:
            out.append((where, f"{name}: {value}"))
        except Exception as exc:  # noqa: BLE001
            out.append((where, f"{name}: <str() failed: {exc!r}>"))
        for group in getattr(value, "groups", None) or ():
            if group.display_name:
                out.append((f"{where} group name", group.display_name))
        for address in getattr(value, "addresses", None) or ():
            if address.display_name:
                out.append((f"{where} display name", address.display_name))
            out.append((f"{where} addr_spec", address.addr_spec))
    try:
        for name, raw in part.raw_items():
            out.append((f"{label}raw header {name}", f"{name}: {raw}"))
    except Exception:  # noqa: BLE001 - raw values are an extra reading only
        pass
    return out


def part_texts(msg):
    """(where, text) for every header and decoded content of every part of `msg`."""
    out = header_texts(msg, "")
    for n, part in enumerate(msg.walk()):
        ctype = part.get_content_type()
        label = f"part {n} ({ctype}) "
        if n > 0:
            out.extend(header_texts(part, label))
        try:
            filename = part.get_filename()
        except Exception:  # noqa: BLE001
            filename = None
        if filename:
            out.append((f"{label}file name", filename))
        if part.is_multipart():
            continue
        try:
            content = part.get_content()
        except Exception:  # noqa: BLE001 - fall back to the undecoded payload
            content = part.get_payload(decode=False)
        if isinstance(content, bytes):
            content = content.decode("utf-8", errors="replace")
        if not isinstance(content, str):
            content = str(content)
        out.append((f"{label}content", content))
        if ctype == "text/html":
            out.append((f"{label}content, references unescaped", html.unescape(content)))
            rendered = html.unescape(TAG.sub("", COMMENT.sub("", content)))
            out.append((f"{label}content as rendered", rendered))
    return out


def examine(job):
    path, forbidden = job["file"], [a.lower() for a in job["forbidden"]]
    try:
        with open(path, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        texts = part_texts(msg)
    except Exception as exc:  # noqa: BLE001
        return [{"file": path, "address": "", "where": "unreadable", "text": repr(exc)}]
    findings = []
    for where, text in texts:
        for reading in readings(text):
            for address in forbidden:
                if address and address in reading:
                    findings.append(
                        {"file": path, "address": address, "where": where, "text": text[:300]}
                    )
    # One finding per (address, where) is enough to explain a failure.
    unique = {(f["address"], f["where"]): f for f in findings}
    return list(unique.values())


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        jobs = json.load(f)
    findings = []
    for job in jobs:
        findings.extend(examine(job))
    json.dump(findings, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
