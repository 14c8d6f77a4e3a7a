"""Moved to :mod:`ocrstream.streaming.delivery`; kept for imports that predate it."""

from ocrstream.streaming.delivery import Delivery, DeliveryError, Output  # noqa: F401
