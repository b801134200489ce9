"""Gradient, path, noise and CAM methods (registered into `jxai.explain`)."""
