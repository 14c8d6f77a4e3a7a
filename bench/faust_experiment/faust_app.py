"""The faust-streaming app under test (run by experiment.py inside bench/faust_experiment/.venv).

A single agent consumes EXP_TOPIC; for every record it increments a counter in a
table keyed by the record id (the table's changelog is restored on every start)
and appends one JSON line to EXP_PROCESSED_LOG *before* the event is acked, so a
record whose offset faust commits has always been logged first. The line is
written with a single os.write on an O_APPEND descriptor, so it survives SIGKILL.

Configuration (environment): EXP_BROKER (host:port), EXP_APP_ID, EXP_TOPIC,
EXP_PARTITIONS, EXP_PROCESSED_LOG, EXP_ROUND. Started as
``python faust_app.py worker -l info``.
"""

import json
import os
import time

import faust

BROKER = os.environ["EXP_BROKER"]
APP_ID = os.environ["EXP_APP_ID"]
TOPIC = os.environ["EXP_TOPIC"]
PARTITIONS = int(os.environ["EXP_PARTITIONS"])
ROUND = int(os.environ.get("EXP_ROUND", "0"))
LOG_FD = os.open(os.environ["EXP_PROCESSED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

app = faust.App(
    APP_ID,
    broker=f"kafka://{BROKER}",
    store="memory://",  # the table is rebuilt from its changelog topic on every start
    web_enabled=False,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    # A SIGKILLed member must not hold up the next start's rebalance for faust's default 60 s.
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
)

source = app.topic(TOPIC, key_serializer="raw", value_serializer="raw", partitions=PARTITIONS)
seen = app.Table("seen", default=int, partitions=PARTITIONS, key_type=str, value_type=int)


@app.agent(source)
async def process(stream):
    async for event in stream.events():
        rid = event.key.decode()
        seen[rid] += 1
        line = {
            "id": rid,
            "p": event.message.partition,
            "o": event.message.offset,
            "count": seen[rid],  # table value after the increment (restored state + this one)
            "round": ROUND,
            "pid": os.getpid(),
            "t": round(time.time(), 3),
        }
        os.write(LOG_FD, (json.dumps(line) + "\n").encode())


if __name__ == "__main__":
    app.main()
