"""The one place secrets are taken out of text: before it is stored, logged, reported or exported.

`redactor` knows the secrets of this process (the static token, the client secret, every access
token a client-credentials source fetched, the password of every URL fleet was given) and also
removes, without knowing them, what looks like a credential wherever it appears:

- whatever follows `Bearer` (or an Authorization header's `Basic`);
- the userinfo of a URL (`https://user:password@host/` keeps its host, loses `user:password@`);
- the value of a secret-looking query parameter (`?access_token=…`, `&password=…`).

The store runs every text it writes through it (stage errors, transition details, the run's
settings and reason), so a token that a server echoed in an error message is gone before it
reaches the state file, its WAL, `fleet status` or a report; the log renderer does the same for
every event field.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog

REDACTED = "[redacted]"
# Whatever follows "Bearer" (or an Authorization header's "Basic") is a credential.
_CREDENTIAL = re.compile(r"(?i)\b(bearer|authorization:\s*basic)(\s+)[A-Za-z0-9._~+/=-]{6,}")
# The userinfo of a URL: between "scheme://" and the "@" before the host.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#\"'<>]+@")
# Query parameters whose value is a credential.
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&;](?:access_token|id_token|refresh_token|token|api[_-]?key|apikey|password|passwd"
    r"|pwd|secret|client_secret|sig|signature|auth)=)[^&#\s\"'<>]+"
)
_SECRET_NAMES = re.compile(r"(?i)token|key|pass|pwd|secret|sig|auth")
# A known secret shorter than this is not searched for on its own (it would redact ordinary
# words); the patterns above still catch it where it stands as a credential.
_SHORTEST = 4


class Redactor:
    """Removes this process's secrets, and anything that looks like a credential, from text.

    Also a structlog processor: every field of every event, nested ones too.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        # Longest first, so that a secret containing another is removed whole.
        self._ordered: tuple[str, ...] = ()

    def add(self, *secrets: str | None) -> None:
        """Secrets to remove wherever they appear."""
        new = {s for s in secrets if s and len(s) >= _SHORTEST} - self._secrets
        if new:
            self._secrets |= new
            self._ordered = tuple(sorted(self._secrets, key=len, reverse=True))

    def forget(self) -> None:
        """Forget every secret added: for a process that runs one night after another (the
        tests), so one night's token does not redact the next one's words."""
        self._secrets = set()
        self._ordered = ()

    def add_url(self, url: str | None) -> None:
        """The password (and user) of a URL and its secret-looking query values are secrets."""
        if not url:
            return
        try:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            query = parse_qsl(parts.query, keep_blank_values=False)
        except ValueError:
            return
        if parts.password:
            self.add(parts.password, unquote(parts.password))
        self.add(*(value for name, value in query if _SECRET_NAMES.search(name)))

    def scrub(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "://" in text:
            text = _USERINFO.sub(r"\1", text)
        if "=" in text:
            text = _SECRET_PARAMETER.sub(rf"\1{REDACTED}", text)
        if _CREDENTIAL.search(text) is None:  # a third of the cost of `sub` (every log field)
            return text
        return _CREDENTIAL.sub(rf"\1\2{REDACTED}", text)

    def scrub_optional(self, text: str | None) -> str | None:
        return None if text is None else self.scrub(text)

    def scrub_value(self, value: Any) -> Any:
        """`value` with every string in it scrubbed, keys of mappings too."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, int | float | bool | type(None)):
            return value
        if isinstance(value, Mapping):
            return {self.scrub(str(k)): self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub_value(v) for v in value]
        return self.scrub(str(value))

    def __call__(
        self, _logger: object, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if key != "exc_info":  # rendered by the console renderer, scrubbed there
                event[key] = self.scrub_value(value)
        return event

    def traceback(self, sio: TextIO, exc_info: Any) -> None:
        """The console renderer's exception formatter, scrubbed like every other field."""
        buffer = io.StringIO()
        structlog.dev.plain_traceback(buffer, exc_info)
        sio.write(self.scrub(buffer.getvalue()))


redactor = Redactor()
