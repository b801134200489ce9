"""Benchmark worker: iNNvestigate 2.1.2 on TensorFlow 2.14 (run by `bench_libraries.py`).

Run with the TF venv's interpreter: ``/work/venvs/tf214/bin/python benchmarks/run_innvestigate.py``;
it speaks the `_worker` line protocol. It rebuilds VGG16 / the seed U-Net in tf.keras with the
exported weights, creates one analyzer per method (graph building is the warm-up) and times
``analyzer.analyze(x, neuron_selection=labels)``. Grad-CAM is not part of iNNvestigate 2.1.2.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _worker import IG_STEPS, SMOOTHGRAD_SAMPLES, load_weights, serve  # noqa: E402

tf.compat.v1.disable_eager_execution()  # iNNvestigate 2 builds a graph
import innvestigate  # noqa: E402

keras = tf.keras
STATE: dict = {}


def vgg16(input_shape):
    return keras.applications.VGG16(weights=None, include_top=True, input_shape=input_shape,
                                    classifier_activation=None)


def unet(input_shape, base=16):
    """The seed U-Net, explanation variant (linear output, flattened), Keras automatic names."""
    counts: dict[str, int] = {}

    def name(base_name):
        n = counts.get(base_name, 0)
        counts[base_name] = n + 1
        return base_name if n == 0 else f"{base_name}_{n}"

    def conv(x, filters):
        return keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                   name=name("conv2d"))(x)

    inputs = keras.Input(input_shape)
    x, skips = inputs, []
    for level in range(4):
        x = conv(conv(x, base * 2**level), base * 2**level)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=name("max_pooling2d"))(x)
    x = conv(conv(x, base * 16), base * 16)
    for level in range(3, -1, -1):
        x = keras.layers.Conv2DTranspose(base * 2**level, 2, strides=2, padding="same",
                                         name=name("conv2d_transpose"))(x)
        x = keras.layers.Concatenate()([x, skips[level]])
        x = conv(conv(x, base * 2**level), base * 2**level)
    x = keras.layers.Conv2D(1, 1, name=name("conv2d"))(x)
    return keras.Model(inputs, keras.layers.Flatten()(x))


def setup(model, weights, inputs, labels, forward_out):
    x = np.load(inputs)
    build = {"vgg16": vgg16, "unet": unet}[model]
    net = build(x.shape[1:])
    params = load_weights(weights)
    for layer in net.layers:
        if layer.name in params:
            layer.set_weights([params[layer.name]["kernel"], params[layer.name]["bias"]])
            del params[layer.name]
    if params:
        raise ValueError(f"weights not used by the Keras model: {sorted(params)}")
    np.save(forward_out, net.predict(x, batch_size=len(x), verbose=0))
    STATE.update(net=net, x=x, labels=np.load(labels), analyzers={})
    return {"library": f"innvestigate {innvestigate.__version__} / tensorflow {tf.__version__}"}


def analyzer(method):
    net, x = STATE["net"], STATE["x"]
    spread = float(x.max() - x.min())
    options = {
        "gradient": ("gradient", {}),
        "lrp.epsilon": ("lrp.epsilon", {}),
        "lrp.sequential_preset_a_flat": ("lrp.sequential_preset_a_flat", {}),
        "integrated_gradients": ("integrated_gradients", {"steps": IG_STEPS}),
        "smoothgrad": ("smoothgrad", {"augment_by_n": SMOOTHGRAD_SAMPLES,
                                      "noise_scale": 0.15 * spread}),
    }
    if method not in options:
        raise NotImplementedError(f"{method} is not in iNNvestigate 2.1.2")
    if method not in STATE["analyzers"]:
        name, kwargs = options[method]
        STATE["analyzers"][method] = innvestigate.create_analyzer(
            name, net, neuron_selection_mode="index", **kwargs)
    return STATE["analyzers"][method]


def run(method):
    return analyzer(method).analyze(STATE["x"], neuron_selection=STATE["labels"])


if __name__ == "__main__":
    serve(setup, run)
