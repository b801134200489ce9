"""Tree ensembles: scikit-learn forests and boosted trees as JAX arrays, explained by TreeSHAP.

    trees = jxai.trees.from_sklearn(random_forest)         # RandomForest/ExtraTrees/GradientBoosting
    trees(x)                                                # (B, C): predict_proba / predict / margin
    phi = jxai.explain(trees, x, "tree_shap")               # (B, F): the predicted class
    phi = jxai.explain(trees, x, "tree_shap", background=x_train[:100])     # interventional
    values, expected = jxai.trees.shap_values(trees, x)     # shap.TreeExplainer's layout

`ensemble`: `TreeEnsemble`, the padded arrays and `from_arrays`; `sklearn`: `from_sklearn`;
`paths`: root-to-leaf paths enumerated once on the host; `treeshap`: the JAX kernels
(path-dependent and interventional); `explain`: targets and the registered ``tree_shap`` method.
"""

from jxai.trees.ensemble import TreeEnsemble, from_arrays
from jxai.trees.explain import TREE_METHODS, explain
from jxai.trees.paths import expected_value
from jxai.trees.sklearn import from_sklearn
from jxai.trees.treeshap import shap_values, tree_shap_all

__all__ = ["TREE_METHODS", "TreeEnsemble", "expected_value", "explain", "from_arrays",
           "from_sklearn", "shap_values", "tree_shap_all"]
