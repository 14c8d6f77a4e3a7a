"""Topic topology: names, partitions, replication, retention, cleanup policy."""

from .apply import TopicReport, apply_topics
from .topics import TopicSpec, page_partition, topic_specs

__all__ = ["TopicReport", "TopicSpec", "apply_topics", "page_partition", "topic_specs"]
