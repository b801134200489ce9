"""The seed networks as Flax modules (importable as `jxai.models`)."""
