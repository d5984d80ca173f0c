"""Secrets are never printed: passwords in URLs, options named like secrets, and known secrets
anywhere in a message (an error from a client library, say).

A URL's password is whatever sits between the first ``:`` after the scheme and the last ``@``,
so a password holding ``@``, ``/``, ``?`` or ``#`` is masked whole; query parameters named like
secrets (``?password=``) are masked too. The rules are textual, so they hold for a URL a client
would refuse to parse, which is exactly when it ends up in an error message.

>>> mask_url("redis://app:p@ss@db:6379/0")
'redis://app:***@db:6379/0'
>>> mask_url("unix:///run/redis.sock?db=0&password=pw")
'unix:///run/redis.sock?db=0&password=***'
>>> redact("AUTH failed for redis://:pw@db/0 with s3cr3t!", ["s3cr3t!"])
'AUTH failed for redis://:***@db/0 with ***'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

MASK = "***"
#: Option and parameter names whose values are secrets: librdkafka's ``sasl.password``,
#: ``ssl.key.password``, ``ssl.keystore.password``, ``ssl.key.pem``,
#: ``sasl.oauthbearer.client.secret`` and ``sasl.oauthbearer.config``; redis-py's ``password``
#: and ``ssl_password``; anything with ``token`` or ``credential`` in its name.
SECRET_NAME = re.compile(r"pass|secret|token|key|credential|oauthbearer\.config|jaas", re.I)
#: Shorter secrets cannot be told from ordinary words in free text (URLs and option listings
#: mask them whatever their length).
MIN_REDACTED = 4

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/{1,2}")
# A query parameter; the value runs to the next ``&name=`` (or ``;name=``), so a secret holding
# ``&`` or ``#`` is masked whole.
_PARAM = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&;#?/]*)=(?P<value>(?:[^&;]|[&;](?![^=&;#]*=))*)")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/{1,2}[^\s'\"<>]+")


def mask_url(url: str) -> str:
    """``url`` with its password and secret query parameters replaced by ``***``."""
    masked = _PARAM.sub(_mask_param, url)
    span = _password_span(masked)
    if span is None:
        return masked
    return masked[:span[0]] + MASK + masked[span[1]:]


def url_secrets(url: str) -> list[str]:
    """The secrets ``url`` holds, as written and percent-decoded."""
    found = [m["value"] for m in _PARAM.finditer(url) if _is_secret(m["name"], m["value"])]
    masked = _PARAM.sub(_mask_param, url)
    span = _password_span(masked)
    if span is not None and span[1] > span[0]:
        found.append(masked[span[0]:span[1]])
    return found + [unquote(s) for s in found]


def option_secrets(options: Mapping[str, Any]) -> list[str]:
    """The values of the options named like secrets."""
    return [str(v) for k, v in options.items() if _is_secret(k, v)]


def mask_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the values of those named like secrets replaced by ``***``."""
    return {k: (MASK if _is_secret(k, v) else v) for k, v in options.items()}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL masked and every known secret of ``MIN_REDACTED`` characters
    or more replaced by ``***``."""
    out = _URL.sub(lambda m: mask_url(m.group(0)), text)
    for secret in sorted({s for s in secrets if len(s) >= MIN_REDACTED}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out


def _is_secret(name: object, value: object) -> bool:
    return bool(SECRET_NAME.search(str(name))) and value not in (None, "")


def _mask_param(m: re.Match[str]) -> str:
    if not _is_secret(m["name"], m["value"]):
        return m.group(0)
    return f"{m['sep']}{m['name']}={MASK}"


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of ``url``'s user information starts and ends, if it has one."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    at = url.rfind("@", start)
    if at < 0:
        return None
    colon = url.find(":", start, at)
    return None if colon < 0 else (colon + 1, at)
