"""Allowed webhook receivers: the ``OCRSTREAM_WEBHOOK_ALLOWED_HOSTS`` entries, parsed.

Apart from :mod:`ocrstream.webhooks` because the settings validate the setting with
:func:`parse_host_rules`, and the webhook checks need the settings: one module each way, no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class HostRule:
    """One allowed receiver: ``scheme`` (``https``, or ``http`` where written so), ``host``
    (lower case; an IPv6 address without brackets) and ``port``."""

    scheme: str
    host: str
    port: int

    def admits(self, scheme: str, host: str, port: int) -> bool:
        """True when a URL with these (parsed, lower-cased) parts may be called."""
        return (scheme, host, port) == (self.scheme, self.host, self.port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'http://' if self.scheme == 'http' else ''}{host}:{self.port}"


def parse_host_rules(text: str) -> tuple[HostRule, ...]:
    """``"hooks.example.com, http://127.0.0.1:8000"`` -> rules (https port 443; http port 8000).

    Raises:
        ValueError: an entry with another scheme, a path, query, credentials, no host or a bad port.
    """
    rules = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        scheme, sep, rest = entry.partition("://")
        if not sep:
            scheme, rest = "https", entry
        scheme = scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"allowed webhook host {entry!r}: scheme must be https (default) or http")
        try:
            parts = urlsplit(f"{scheme}://{rest}")
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"allowed webhook host {entry!r}: {exc}") from None
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(f"allowed webhook host {entry!r}: expected host[:port] or http://host[:port]")
        rules.append(HostRule(scheme, parts.hostname, port or DEFAULT_PORTS[scheme]))
    return tuple(rules)
