"""Producers: the publish library, `ocrstream submit` and the drop-folder watcher."""
