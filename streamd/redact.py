"""Credential redaction for URLs: nothing with a password leaves the process unredacted."""

from __future__ import annotations

import re

# scheme://user:password@host  -> scheme://user:***@host ; also scheme://token@host -> ***@
# The userinfo ends at the LAST '@' before the host (FFmpeg splits there too), so '@' or '/' in a
# password cannot leak part of it.
_USERINFO = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*)(?::(?P<pw>\S*?))?@(?=[^@\s]*(?:[/?#\s]|$))"
)
_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|key|secret|auth)=)[^&\s]*")


def redact(text: str) -> str:
    """Return ``text`` with URL passwords and secret-looking query values replaced by ``***``."""

    def _userinfo(m: re.Match[str]) -> str:
        if m.group("pw") is None:
            # a bare userinfo without ':' is usually a token
            return f"{m.group('scheme')}***@"
        return f"{m.group('scheme')}{m.group('user')}:***@"

    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(_userinfo, text))
