"""Fitted scikit-learn trees and ensembles read into a `TreeEnsemble` (no pickle, no copy of the
estimator: only the ``tree_`` arrays are read).

What each model's ensemble outputs (``shap.TreeExplainer``'s ``model_output="raw"`` choices):

============================================  ========================================  =========
model                                         outputs (C)                               ``output``
============================================  ========================================  =========
RandomForest/ExtraTrees/DecisionTree          ``predict_proba``: the mean over trees    probability
Classifier                                    of each leaf's class fractions (C =
                                              n_classes, 2 for a binary model)
RandomForest/ExtraTrees/DecisionTree          ``predict``: the mean of the trees' leaf  value
Regressor                                     values (C = n_outputs)
GradientBoostingRegressor                     ``predict``: init + learning_rate × Σ     value
                                              trees (C = 1)
GradientBoostingClassifier                    ``decision_function``: the raw margin,    margin
                                              init (log-odds of the prior) +
                                              learning_rate × Σ trees (binary: C = 1;
                                              K classes: C = K softmax logits)
============================================  ========================================  =========

A gradient boosting model's init must be ``"zero"`` or the default prior/mean (a Dummy
estimator): its constant is read as ``decision_function`` minus the trees on one probe row.
"""

from __future__ import annotations

import numpy as np

from jxai.trees.ensemble import TreeEnsemble, from_arrays

__all__ = ["from_sklearn"]

_FORESTS = ("RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier",
            "ExtraTreesRegressor")
_SINGLE = ("DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier",
           "ExtraTreeRegressor")
_BOOSTED = ("GradientBoostingClassifier", "GradientBoostingRegressor")
SUPPORTED = _FORESTS + _SINGLE + _BOOSTED


def from_sklearn(model) -> TreeEnsemble:
    """Read a fitted scikit-learn tree model into a `TreeEnsemble` (see the module table).

    Supported: RandomForest, ExtraTrees, DecisionTree/ExtraTree and GradientBoosting, classifiers
    (binary and multi-class) and regressors. Multi-output classifiers are not supported.
    """
    name = type(model).__name__
    if name not in SUPPORTED:
        raise TypeError(f"from_sklearn: {name} is not a supported tree model; supported: "
                        f"{', '.join(SUPPORTED)}")
    if not (hasattr(model, "tree_") or hasattr(model, "estimators_")):
        raise ValueError(f"from_sklearn: this {name} is not fitted; call fit(X, y) first")
    n_features = int(model.n_features_in_)
    if name in _BOOSTED:
        return _boosted(model, name, n_features)
    trees = [e.tree_ for e in model.estimators_] if name in _FORESTS else [model.tree_]
    classifier = name.endswith("Classifier")
    if classifier and getattr(model, "n_outputs_", 1) != 1:
        raise ValueError(f"from_sklearn: a multi-output {name} ({model.n_outputs_} outputs) is "
                         "not supported; fit one classifier per output")
    values = []
    for tree in trees:
        v = tree.value.reshape(tree.value.shape[0], -1).astype(np.float64)
        if classifier:  # class fractions, as predict_proba averages them
            v = v / v.sum(axis=1, keepdims=True)
        values.append(v / len(trees))
    return from_arrays(
        [t.children_left for t in trees], [t.children_right for t in trees],
        [t.feature for t in trees], [t.threshold for t in trees], values,
        [t.weighted_n_node_samples for t in trees],
        base=0.0, n_features=n_features, output="probability" if classifier else "value",
        source=name)


def _boosted(model, name: str, n_features: int) -> TreeEnsemble:
    init = model.init_
    if not (isinstance(init, str) and init == "zero") and type(init).__name__ not in (
            "DummyRegressor", "DummyClassifier"):
        raise ValueError(f"from_sklearn: {name} with init={type(init).__name__} is not supported: "
                         "its initial prediction is not a constant; use init=None or 'zero'")
    stages = model.estimators_  # (n_stages, K) regression trees, K = 1 or n_classes
    k_outputs = stages.shape[1]
    rate = float(model.learning_rate)
    trees, values = [], []
    for stage in stages:
        for k, estimator in enumerate(stage):
            tree = estimator.tree_
            v = np.zeros((tree.node_count, k_outputs))
            v[:, k] = tree.value.reshape(tree.node_count) * rate
            trees.append(tree)
            values.append(v)
    # the init's constant: the model's raw output minus the trees' on one probe row
    probe = np.zeros((1, n_features), np.float32)
    raw = model.decision_function(probe) if name.endswith("Classifier") else model.predict(probe)
    raw = np.asarray(raw, np.float64).reshape(k_outputs)
    for stage in stages:
        for k, estimator in enumerate(stage):
            raw[k] -= rate * float(estimator.tree_.predict(probe).reshape(-1)[0])
    return from_arrays(
        [t.children_left for t in trees], [t.children_right for t in trees],
        [t.feature for t in trees], [t.threshold for t in trees], values,
        [t.weighted_n_node_samples for t in trees],
        base=raw, n_features=n_features,
        output="margin" if name.endswith("Classifier") else "value", source=name)
