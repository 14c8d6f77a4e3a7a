"""Model profiles: named sets of engine, model and DPI settings (``OCRSTREAM_PROFILES``).

A profile is what OCRs a page: runtime (``engine``, ``engine_device``), models (``model_dir``
with ``*det*.onnx`` / ``*rec*.onnx`` and the character list, ``det_int8``; the paddle engine's
model directories), render DPI and the engine's thresholds and modes
(:data:`ocrstream.settings.PROFILE_FIELDS`). ``default`` is the engine settings themselves
(PP-OCRv6 small unless configured otherwise); every other profile sets some of them and keeps the
rest. Each profile has its own page topics and worker group (:mod:`topology.pages`): a worker
serves exactly one (``OCRSTREAM_PROFILE``), because its models are loaded once at start, and a
profile whose runtime needs another environment (the paddle engine's pins conflict with the
default engine's, see README "OCR engine") is served by workers started from that environment.
Which documents go to which profile is :mod:`consumers.routing`'s; whether a tenant may name a
profile (:func:`check_named_profile`) is here, because the gateway refuses such a request before
anything is stored and the splitter enforces the same rule.
"""

from __future__ import annotations

from topology.pages import DEFAULT_PROFILE

from .errors import OcrstreamError, ReasonCode
from .settings import PROFILE_FIELDS, ProfileRoute, Settings

DEFAULT_ROUTE = ProfileRoute()
"""A tenant without an entry (and no ``*``): the default profile only, no shadow."""


def profile_names(s: Settings) -> tuple[str, ...]:
    """``default`` and the profiles of ``OCRSTREAM_PROFILES``, in that order."""
    return (DEFAULT_PROFILE, *s.profiles)


def route_of(s: Settings, tenant: str | None) -> ProfileRoute:
    """The routing rules of ``tenant`` (None: the default tenant) in ``OCRSTREAM_PROFILE_ROUTES``:
    its own entry (``-`` for the default tenant), else ``*``, else :data:`DEFAULT_ROUTE`."""
    routes = s.profile_routes
    return routes.get("-" if tenant is None else tenant) or routes.get("*") or DEFAULT_ROUTE


def check_named_profile(s: Settings, tenant: str | None, profile: str) -> str:
    """``profile`` when a document of ``tenant`` (None: the default tenant) may name it
    (``DocumentRef.profile``): one of its route's ``allowed`` profiles, else of its A/B ``split``.
    The name is a request, not a grant.

    Raises:
        OcrstreamError: ``profile_not_allowed`` (unknown profiles included, said so in the message).
    """
    allowed = route_of(s, tenant).allowed_profiles()
    if profile not in allowed:
        who = "the default tenant" if tenant is None else f"tenant {tenant!r}"
        known = "" if profile == DEFAULT_PROFILE or profile in s.profiles else " (no such profile)"
        raise OcrstreamError(ReasonCode.PROFILE_NOT_ALLOWED,
                             f"profile {profile[:63]!r}{known} is not allowed for {who} "
                             f"(allowed: {', '.join(sorted(allowed))})")
    return profile


def profile_overrides(s: Settings, profile: str) -> dict:
    """The settings ``profile`` sets (``{}`` for ``default``), without its ``description``.

    Raises:
        ValueError: ``profile`` is neither ``default`` nor in ``OCRSTREAM_PROFILES``.
    """
    if profile == DEFAULT_PROFILE:
        return {}
    if profile not in s.profiles:
        raise ValueError(f"profile {profile!r} is not defined: OCRSTREAM_PROFILES has {', '.join(profile_names(s))}")
    return {k: v for k, v in s.profiles[profile].items() if k in PROFILE_FIELDS}


def profile_settings(s: Settings, profile: str | None = None) -> Settings:
    """The settings of a worker serving ``profile`` (None: ``s.profile``): ``s`` with the profile's
    settings over its own and ``profile`` set, validated like any settings.

    Apply it to the deployment's settings (the environment's). Applying it again for the same
    profile changes nothing (the values are absolute), so a worker may be given settings that
    already are its profile's.

    Raises:
        ValueError: ``profile`` is not defined (see :func:`profile_overrides`).
        pydantic.ValidationError: the merged settings are invalid (e.g. OpenVINO on a GPU device).
    """
    name = profile or s.profile
    overrides = profile_overrides(s, name)
    if not overrides:
        return s if s.profile == name else s.model_copy(update={"profile": name})
    # model_validate, not Settings(...): validates exactly these values, reads no environment again.
    return Settings.model_validate({**s.model_dump(), **overrides, "profile": name})


def describe_profiles(s: Settings) -> list[dict]:
    """One entry per profile: ``name``, ``description``, the settings it sets (``settings``) and
    the effective engine-related values of a worker serving it (``effective``), for ``ocrstream
    profiles``."""
    out = []
    for name in profile_names(s):
        ps = profile_settings(s, name)
        out.append({"name": name, "description": (s.profiles.get(name) or {}).get("description"),
                    "settings": profile_overrides(s, name),
                    "effective": {f: (str(v) if v is not None and not isinstance(v, (int, float, bool, str)) else v)
                                  for f in PROFILE_FIELDS for v in [getattr(ps, f)]}})
    return out
