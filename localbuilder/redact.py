"""Secrets kept out of what localbuilder shows: the one place that knows what a secret looks like.

Messages, ``build.log``, run outputs and quoted console lines carry what users paste and guests print: a
SAS URL (``https://acct.blob.core.windows.net/c/b.vhd?sv=…&sig=…``), a storage connection string
(``…;AccountKey=…``), a password on a guest's console. Every module that shows such text goes through
one of these four functions, from the bluntest to the most selective:

* ``strip_query(url)``: the URL without its query and fragment. For what is *kept* (a blob target's
  ``url``, a run output's ``artifactUri``): nothing of a SAS token survives, not even its harmless fields.
* ``hide_query(url)``: the query shown as ``…``. For a URL in a message (a fetched ``scriptUri``): the
  reader sees that the URL had a query, never what it was.
* ``redact(text)``: free text (an SDK error, an ``--staging`` value): the values of the storage secrets
  (``STORAGE_SECRETS``: a SAS signature, an account key, a connection string's SAS) become ``REDACTED``;
  the rest (``sv=``, ``se=``, the account and container) stays, because it helps find the fault.
* ``redact_line(line)``: a guest console line, which may hold anything: ``redact``, plus ``password=``-style
  assignments, bearer tokens, and a private key's PEM armour (the whole line is then replaced).

Pure functions of strings; imports nothing from localbuilder, so any layer may use it.
"""

from __future__ import annotations

import re
import urllib.parse

REDACTED = "REDACTED"

# Storage secrets as they appear in SAS query strings (sig=) and connection strings (AccountKey=,
# SharedAccessSignature=), case-insensitive; the value ends at &, ; or whitespace.
STORAGE_SECRETS = re.compile(r"(?i)\b(sig|signature|accountkey|sharedaccesssignature)=([^&;\s]+)")
# What a console may show besides: "password=…"-style assignments, bearer tokens, PEM private keys.
_SECRET_WORDS = re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key)(\s*[=:]\s*)(\S+)")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def strip_query(url: str) -> str:
    """``url`` without query string and fragment."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def hide_query(url: str) -> str:
    """``url`` with its query string (if any) shown as ``…``."""
    parts = urllib.parse.urlsplit(url)
    if parts.query:
        return urllib.parse.urlunsplit(parts._replace(query="…"))
    return url


def redact(text: str) -> str:
    """``text`` with SAS signatures and account keys replaced by ``REDACTED``."""
    return STORAGE_SECRETS.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


def redact_line(line: str) -> str:
    """A console ``line`` with SAS signatures, account keys, passwords and tokens replaced by ``REDACTED``."""
    if _PRIVATE_KEY.search(line):
        return "(a private key — not shown)"
    line = redact(line)
    line = _SECRET_WORDS.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", line)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", line)
