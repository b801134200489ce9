"""Model import into jxai (importable as `jxai.converters`)."""
