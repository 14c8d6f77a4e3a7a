"""Topic topology: names, partitions, replication, retention, cleanup policy."""

from .apply import TopicReport, apply_topics
from .topics import TopicSpec, topic_specs

__all__ = ["TopicReport", "TopicSpec", "apply_topics", "topic_specs"]
