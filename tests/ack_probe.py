"""An ``acks=all`` idempotent producer in its own process (the cluster tests' write probe).

    python tests/ack_probe.py TOPIC PARTITIONS OUT_FILE [EVERY_S]

Settings come from the ``OCRSTREAM_*`` environment (the tests pass the cluster's). It writes
numbered records round-robin over the partitions every ``EVERY_S`` seconds until SIGTERM, then
waits up to 120 s for the outstanding delivery reports. ``OUT_FILE`` gets one JSON line per
report: ``{"v": value, "p": partition, "o": offset, "t": unix time}`` when acknowledged with an
offset, ``{"v": value, "err": error name}`` when it failed, ``{"v": value, "refused": error name}``
when ``produce()`` refused it, and last ``{"pending": n, "sent": n, "refused": n}``.
Its own process, so the test process's state (engines, other clients) cannot disturb it.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

from confluent_kafka import KafkaException, Producer

from ocrstream.kafka import producer_config
from ocrstream.settings import Settings


def main() -> None:
    topic, partitions, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    every_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    conf = {k: v for k, v in producer_config(Settings(), **{"message.timeout.ms": 240_000}).items() if k != "logger"}
    producer = Producer(conf)
    out = open(out_path, "w", buffering=1)

    def report(err, msg) -> None:
        if err is None and msg.offset() >= 0:
            row = {"v": msg.value().decode(), "p": msg.partition(), "o": msg.offset(), "t": time.time()}
        else:
            row = {"v": msg.value().decode(), "err": err.name() if err else "NO_OFFSET"}
        out.write(json.dumps(row) + "\n")

    sent = refused = 0
    while not stop.is_set():
        value = f"probe-{sent:06d}".encode()
        try:
            producer.produce(topic, value=value, partition=sent % partitions, on_delivery=report)
        except KafkaException as exc:
            # refused at once, never queued: a loud failure (e.g. _UNKNOWN_TOPIC while a restarted
            # broker answers metadata before it has loaded its topics)
            refused += 1
            out.write(json.dumps({"v": value.decode(), "refused": exc.args[0].name()}) + "\n")
        sent += 1
        producer.poll(0)
        stop.wait(every_s)
    pending = producer.flush(120)
    out.write(json.dumps({"pending": pending, "sent": sent, "refused": refused}) + "\n")
    out.close()


if __name__ == "__main__":
    main()
