"""``tree_shap``: TreeSHAP for tree ensembles; it lives in `jxai.trees` (imported here so that
the method registry, `jxai.list_methods()`, lists it)."""

from jxai.trees.explain import tree_shap

__all__ = ["tree_shap"]
