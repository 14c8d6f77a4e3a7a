"""Topic topology: names, partitions, replication, retention, cleanup policy."""

from .apply import TopicReport, apply_topics
from .topics import Retention, TopicSpec, page_partition, topic_specs

__all__ = ["Retention", "TopicReport", "TopicSpec", "apply_topics", "page_partition", "topic_specs"]
