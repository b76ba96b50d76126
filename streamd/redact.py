"""Credential redaction: nothing with a password, token or signature leaves the process unredacted."""

from __future__ import annotations

import re

# A URL runs from its scheme to the first whitespace or quote. Its userinfo ends at the LAST '@' of the URL,
# not at the first '/', ':' or '@': a password such as Pa55@w/rd or a:b%2F is hidden whole (over-hiding a
# path that holds an '@' is the safe mistake). user:password -> user:***, a bare token@ -> ***@, and
# so is anything whose "user" part holds / @ ? or #.
# (Only the character before "://" is looked at: matching the whole scheme would make a long run of letters
# quadratic to scan.)
_URL = re.compile(r"(?<=[a-zA-Z0-9+.\-])://(?P<rest>[^\s'\"<>`]*)")
# Secret-looking query parameters, anywhere in the query (after ? & or ;), any case: api_key, apikey,
# access_token, refresh_token, client_secret, sig, signature, X-Amz-Signature, X-Amz-Security-Token, ...
_SECRET_NAME = (r"(?:[a-z0-9]+[_.\-])*(?:api_?key|access_?token|token|sig|signature|password|passwd|pwd|secret|key|"
                r"auth|credential|session)")
_SECRET_QUERY = re.compile(rf"(?i)[?&;]{_SECRET_NAME}=(?P<value>[^&;#\s'\"<>`]*)")
MASK = "***"


def redact(text: str) -> str:
    """Return ``text`` with URL passwords and secret-looking query values replaced by ``***``.

    Idempotent: ``redact(redact(x)) == redact(x)``.
    """
    if "://" not in text and "=" not in text:
        return text
    spans: list[tuple[int, int]] = []  # [start, end) of each secret; overlaps merge, so no part survives
    for m in _URL.finditer(text):
        rest, base = m.group("rest"), m.start("rest")
        at = rest.rfind("@")
        if at < 0:
            continue
        colon = rest.find(":", 0, at)
        if colon >= 0 and not any(c in rest[:colon] for c in "/@?#"):
            spans.append((base + colon + 1, base + at))  # a plain user name stays readable
        else:
            spans.append((base, base + at))  # a token, or a "user" that holds part of a secret
    for m in _SECRET_QUERY.finditer(text):
        spans.append((m.start("value"), m.end("value")))
    if not spans:
        return text
    spans.sort()
    out: list[str] = []
    pos = 0
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        out.append(text[pos:start])
        out.append(MASK)
        pos = end
    out.append(text[pos:])
    return "".join(out)
