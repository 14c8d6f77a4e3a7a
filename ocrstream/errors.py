"""Reason codes and the one exception type that carries them: defined in :mod:`schemas.errors`
(part of the wire contract, and ``schemas`` imports nothing from the project); re-exported here."""

from schemas.errors import OcrstreamError, ReasonCode  # noqa: F401
