"""The HTTP gateway (``ocrstream gateway``): submit documents and read results over HTTP.

- :mod:`.app`: the FastAPI application, its endpoints and :func:`serve`.
- :mod:`.auth`: API keys -> tenants.
- :mod:`.intake`: uploads and references -> DocumentRefs on the tenant's ingest topic.
- :mod:`.limits`: per-tenant quota, the OCR workers' page backlog.
- :mod:`.results_table`: the in-memory table of the compacted results topics and its tailer.
"""

from .app import Gateway, create_app, serve

__all__ = ["Gateway", "create_app", "serve"]
