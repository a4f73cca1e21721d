"""No credential in a log line: the filter ``nefos serve`` puts on every log handler.

Credentials reach the server in places that servers like to log: the query string
of ``/ws?token=...`` (uvicorn's access log and its WebSocket handshake lines, which
print the path with its query), and the handshake's headers (the ``websockets``
library prints every request header at debug level). :func:`redact` rewrites a line
so that

* the values of the query parameters ``token``, ``ticket``, ``api_key`` and
  ``access_token`` read ``[redacted]`` (``/ws?token=[redacted]``);
* the values of the headers ``Authorization``, ``X-API-Key``, ``X-Auth-Token``,
  ``Cookie`` and ``Sec-WebSocket-Protocol`` read ``[redacted]``;
* a ``Bearer <credential>`` or a ``bearer.<credential>`` subprotocol anywhere else
  reads ``Bearer [redacted]`` / ``bearer.[redacted]``.

:class:`RedactCredentials` applies it to a record's message, its formatted
traceback and its stack: as a filter on a *handler* it sees every record that
handler writes, whichever logger made it (a filter on a logger would miss the
records its children propagate).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

REDACTED = "[redacted]"
#: Query parameters that carry a credential.
SECRET_PARAMS = ("token", "ticket", "api_key", "access_token")
#: Headers that carry one.
SECRET_HEADERS = (
    "authorization",
    "x-api-key",
    "x-auth-token",
    "cookie",
    "sec-websocket-protocol",
)

_PARAM = re.compile(
    r"(?P<key>(?:^|[?&;\s\"'(])(?:" + "|".join(SECRET_PARAMS) + r")=)(?P<value>[^&\s\"'#;)]*)",
    re.IGNORECASE,
)
_HEADER = re.compile(
    r"(?P<key>\b(?:" + "|".join(SECRET_HEADERS) + r")\s*[:=]\s*)(?P<value>[^\r\n]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\bbearer[\s.]+)(?P<value>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE)
#: Credentials by their own shape, wherever they stand (a percent-encoded parameter
#: name, ``/ws?%74oken=...``, escapes the patterns above): Nefos's API keys, WebSocket
#: tickets and invitation tokens by their prefixes, and JWTs (a JSON header, "eyJ").
_SHAPES = re.compile(
    r"(?P<key>)(?P<value>\b(?:nfs|nft|nfi)_[A-Za-z0-9_-]{8,}"
    r"|\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)"
)


def _keep_key(match: re.Match[str]) -> str:
    return match.group("key") + REDACTED


def redact(text: str) -> str:
    """``text`` with every credential it shows replaced by ``[redacted]``."""
    if not text:
        return text
    text = _PARAM.sub(_keep_key, text)
    text = _HEADER.sub(_keep_key, text)
    text = _BEARER.sub(_keep_key, text)  # "[redacted]" itself does not match: no "["
    return _SHAPES.sub(_keep_key, text)


class RedactCredentials(logging.Filter):
    """A handler filter: the record's message, traceback and stack, redacted."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        # The arguments are redacted one by one, so that formatters that read them
        # (uvicorn's access log unpacks its tuple) still can; what a non-string
        # argument still shows is caught on the formatted message.
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, Mapping):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself
            return True
        safe = redact(message)
        if safe != message:
            record.msg, record.args = safe, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(handlers: list[logging.Handler] | None = None) -> None:
    """Put the filter on ``handlers`` (default: the root logger's and those of every
    logger configured so far), once each."""
    if handlers is None:
        handlers = list(logging.getLogger().handlers)
        for logger in logging.Logger.manager.loggerDict.values():
            if isinstance(logger, logging.Logger):
                handlers.extend(logger.handlers)
    for handler in handlers:
        if not any(isinstance(f, RedactCredentials) for f in handler.filters):
            handler.addFilter(RedactCredentials())
