"""`load_keras`: a Keras model file -> `jxai.Network`, without TensorFlow.

    network = jxai.load_keras("model.h5")          # legacy HDF5 (tf.keras 2.x or Keras 3)
    network = jxai.load_keras("model.keras")       # Keras 2.13-2.15 or Keras 3 archive
    y = network(x)                                 # == keras_model.predict(x) (float32)
    logits = network.without_output_activation()(x)

The network's module is a `KerasModel` built from a frozen `GraphSpec`; its variables are
``{"params": ..., "batch_stats": ...}`` keyed by Keras layer names.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jxai.converters.keras.errors import KerasFormatError, WeightMismatchError
from jxai.converters.keras.formats import keras_major, open_keras_file
from jxai.converters.keras.graph import parse_model
from jxai.converters.keras.module import KerasModel, activation_module_name
from jxai.converters.keras.spec import GraphSpec
from jxai.converters.keras.weights import graph_weights, variables_from_file

from jxai.network import Network

__all__ = ["load_keras", "network_from_graph", "output_activation"]


def load_keras(path: str | os.PathLike) -> Network:
    """Load a Keras model file as a `jxai.Network` (no TensorFlow, nothing executed from the file).

    Args:
      path: a legacy full-model ``.h5`` (tf.keras 2.x or Keras 3) or a ``.keras`` archive (Keras
        2.13-2.15 or 3; a zip or an unzipped directory).

    Returns:
      A `jxai.Network` whose ``apply(x)`` equals Keras' ``predict(x)`` (inference mode), with
      metadata ``name``, ``input_shape``, ``input_shapes``, ``output_activation``,
      ``output_activation_path``, ``layer_names``, ``source_format``, ``keras_version``.

    Raises:
      KerasFormatError: SavedModel directories, weights-only files, corrupt or truncated files.
      UnsupportedLayerError: Lambda layers, custom classes, unsupported layers or options.
      WeightMismatchError: weights that do not fit the architecture.
    """
    path = os.fspath(path)
    with open_keras_file(path) as kfile:
        if kfile.config is None:
            raise KerasFormatError(
                f"{path} holds weights only, no architecture. Load it into a Flax module with "
                "jxai.converters.keras.load_weights(module, path), or save the full model in "
                "Keras (model.save('model.keras') or 'model.h5')."
            )
        major = keras_major(kfile.keras_version or "3")
        graph = parse_model(kfile.config, major)
        raw = graph_weights(kfile, graph)
        source_format, version = kfile.format, kfile.keras_version
    params, stats, graph = variables_from_file(graph, raw, path)
    variables: dict[str, Any] = {"params": params}
    if stats:
        variables["batch_stats"] = stats
    metadata = {"source_format": source_format, "keras_version": version,
                "source_file": os.path.basename(path)}
    return network_from_graph(graph, variables, metadata, check=True, where=path)


def network_from_graph(graph: GraphSpec, variables: dict, extra_metadata: dict | None = None,
                       check: bool = False, where: str = "") -> Network:
    """Wrap a spec and its variables as a `Network` with the converter's metadata."""
    variables = jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.float32), variables)
    module = KerasModel(graph=graph)
    if check:
        _check_variables(module, graph, variables, where)
    activation, activation_path = output_activation(graph)
    shapes = [list(s) for s in graph.input_shapes]
    metadata = {
        "name": graph.name,
        "input_shape": shapes[0] if len(shapes) == 1 else None,
        "input_shapes": shapes,
        "input_names": [c.rsplit(":", 1)[0] for c in graph.inputs],
        "num_outputs": len(graph.outputs),
        "output_activation": activation,
        "output_activation_path": activation_path,
        "layer_names": [layer.name for layer in graph.layers],
        "layer_paths": _layer_paths(graph, ""),
    }
    metadata.update(extra_metadata or {})
    return Network(module, variables, metadata)


def _layer_paths(graph: GraphSpec, prefix: str) -> list[str]:
    out = []
    for layer in graph.layers:
        out.append(prefix + layer.module)
        if layer.kind == "Model":
            out += _layer_paths(layer.graph, f"{prefix}{layer.module}/")
    return out


def output_activation(graph: GraphSpec, prefix: str = "") -> tuple[str | None, str | None]:
    """(``"softmax"``/``"sigmoid"``, module path) of a final activation module, or Nones."""
    if len(graph.outputs) != 1:
        return None, None
    layer = graph.layer(graph.outputs[0][1].rsplit(":", 1)[0])
    cfg = layer.cfg()
    if layer.kind == "Activation" and cfg["function"] in ("softmax", "sigmoid"):
        return cfg["function"], prefix + layer.module
    if cfg.get("activation") in ("softmax", "sigmoid"):
        return cfg["activation"], prefix + activation_module_name(layer)
    if layer.kind == "Model":
        return output_activation(layer.graph, f"{prefix}{layer.module}/")
    return None, None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) or hasattr(tree, "items"):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}/{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _check_variables(module: KerasModel, graph: GraphSpec, variables: dict, where: str) -> None:
    """Compare the variables with the shapes Flax derives from the architecture (when known)."""
    if any(dim is None for shape in graph.input_shapes for dim in shape):
        return  # unknown spatial sizes: shapes are checked by Flax on the first call
    dummies = [jax.ShapeDtypeStruct((1, *shape), jnp.float32) for shape in graph.input_shapes]
    try:
        expected = jax.eval_shape(lambda *xs: module.init(jax.random.key(0), *xs), *dummies)
    except Exception as exc:  # noqa: BLE001 - report with the file name
        raise WeightMismatchError(f"{where}: the architecture cannot be built for input shapes "
                                  f"{list(graph.input_shapes)}: {exc}") from exc
    want = _flat({k: v for k, v in expected.items() if k in ("params", "batch_stats")})
    have = _flat(variables)
    for key, spec in want.items():
        if key not in have:
            raise WeightMismatchError(f"{where}: variable {key} (shape {spec.shape}) is missing")
        if tuple(np.shape(have[key])) != tuple(spec.shape):
            raise WeightMismatchError(f"{where}: variable {key} has shape "
                                      f"{tuple(np.shape(have[key]))} in the file but the "
                                      f"architecture needs {tuple(spec.shape)}")
    extra = sorted(set(have) - set(want))
    if extra:
        raise WeightMismatchError(f"{where}: weights {extra[:5]} have no place in the model")
