"""Topic topology: names, partitions, replication, retention, cleanup policy."""

from .acls import GRANTS, ROLES, Grant, acl_grants
from .apply import TopicReport, acl_bindings, apply_acls, apply_topics, fit_replication
from .pages import (DEFAULT_LANE, DEFAULT_PROFILE, LANES, check_profile_name, page_topic, page_topics,
                    parse_page_topic, worker_group)
from .shadow import SHADOW_RESULTS, shadow_key, split_shadow_key
from .tenants import TENANT_TOPICS, document_key, follower_group, split_document_key, tenant_of_topic, tenant_topic
from .topics import (PAGES_PARTITIONS, PRODUCTION_REPLICATION_FACTOR, RESULTS_PARTITIONS, Retention, TopicSpec,
                     min_insync_for, page_partition, placed_partition, topic_specs)

__all__ = ["SHADOW_RESULTS", "shadow_key", "split_shadow_key", "DEFAULT_LANE", "DEFAULT_PROFILE", "LANES", "check_profile_name", "page_topic", "page_topics",
           "parse_page_topic", "worker_group", "GRANTS", "ROLES", "Grant", "acl_bindings", "acl_grants", "apply_acls", "Retention", "TopicReport", "TopicSpec", "apply_topics", "page_partition", "placed_partition", "topic_specs",
           "fit_replication", "min_insync_for", "PRODUCTION_REPLICATION_FACTOR", "PAGES_PARTITIONS", "RESULTS_PARTITIONS",
           "TENANT_TOPICS", "document_key", "follower_group", "split_document_key", "tenant_of_topic", "tenant_topic"]
