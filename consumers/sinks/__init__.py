"""Sinks: stages that write document results to where users look (object storage)."""
