"""ocrstream: streaming OCR on Kafka with PP-OCR detection and recognition."""

__version__ = "0.1.0"
