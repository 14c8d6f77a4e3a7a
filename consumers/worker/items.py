"""One consumed page-task record on its way through the worker."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import Message

from ocrstream.engine.base import PageOcr
from ocrstream.errors import OcrstreamError
from schemas import PageTask


@dataclass
class WorkItem:
    """A page task from poll to commit.

    ``image`` is ``HxWx3 uint8 BGR`` once prepared; ``shape`` is ``(height, width)`` pixels.
    ``epoch`` is the assignment generation of its partition when it was consumed: a result
    that comes back after the partition was lost (and maybe assigned again) must not move
    the commit position.
    """

    msg: Message
    received: float  # time.monotonic() at poll
    epoch: int = 0
    lane: str = "batch"  # the priority lane of its page topic (topology.pages.LANES)
    attempts: int = 0  # earlier engine attempts that ended a worker process
    task: PageTask | None = None
    bad: OcrstreamError | None = None  # the record itself is invalid -> dead letter
    future: Future | None = None  # prepare_page future
    image: np.ndarray | None = None
    error: BaseException | None = None  # the page failed -> failed page result
    text_layer: PageOcr | None = None  # read from the PDF's text layer: no OCR
    shape: tuple[int, int] = (0, 0)
    timings: dict[str, float] = field(default_factory=dict)
    phase: str = "queued"  # queued | download | render (set by the prepare thread)
    phase_started: float = 0.0

    @property
    def tp(self) -> tuple[str, int]:
        return self.msg.topic(), self.msg.partition()

    @property
    def mark(self) -> tuple[str, int, int]:
        """``(topic, partition, offset)``: what its in-flight mark is keyed by (:mod:`.attempts`)."""
        return self.msg.topic(), self.msg.partition(), self.msg.offset()

    def on_phase(self, name: str) -> None:
        """Called by the prepare thread as the download and the render start."""
        self.phase_started = time.monotonic()  # first: the poll thread reads phase, then phase_started
        self.phase = name

    def ready(self) -> bool:
        return self.future is None or self.future.done()

    def settle(self) -> None:
        """Collect the prepare result (image or error) once its future is done."""
        if self.future is None or not self.future.done():
            return
        try:
            prepared = self.future.result()
            self.image, self.shape, self.text_layer = prepared.image, prepared.shape, prepared.text_layer
            self.timings.update(prepared.timings)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a failed page result
            self.error = exc
        self.future = None

    def failed(self) -> bool:
        return self.bad is not None or self.error is not None

    def skips_engine(self) -> bool:
        """Published without OCR: invalid or failed, or read from its text layer."""
        return self.failed() or self.text_layer is not None
