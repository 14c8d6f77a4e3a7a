"""Consumer stages: splitter, OCR worker, assembler (each runs on its own or under `ocrstream run`)."""
