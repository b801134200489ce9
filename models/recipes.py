"""Training recipes: each zoo model on the offline data it can learn, with its test score.

| recipe | model | data |
|---|---|---|
| `clever_hans_cnn` | ``clever_hans_cnn`` | Clever Hans images (biased train/test, unbiased test) |
| `mnist1d_cnn` | ``mnist1d_cnn`` | MNIST-1D, 4,000 / 1,000 (seed's CNN: 0.877 test accuracy) |
| `digits_steel_cam` | ``steel_cam`` at 32×32×1, 10 classes | scikit-learn digits |
| `digits_steel_gradcam` | ``steel_gradcam`` at 32×32×1, 10 classes | scikit-learn digits |
| `digits_vgg7` | ``vgg7`` at 32×32×3, 10 classes | scikit-learn digits (grey in 3 channels) |
| `breast_cancer_mlp` | ``tabular_mlp`` with 30 features, sigmoid | scikit-learn breast cancer |
| `clever_hans_unet` | ``unet`` at 64×64×1, 8 base filters | object masks of the Clever Hans set |

The chest X-ray, full-size VGG-7 and full-size U-Net / steel networks have no offline data of their kind
(NIH X-rays, colorectal histology tiles, breast ultrasound, NEU steel images; `digits_vgg7` is
only a small stand-in for the histology tiles, used by `benchmarks/faithfulness.py`); they are
trained by
loading Keras weights (`jxai.converters.keras.load_weights`) or on the user's own data with
`jxai.models.train.fit`.

Every recipe returns ``(network, scores)``; ``scores`` holds the test metric(s) and the
training history. `benchmarks/train_zoo.py` runs them all and saves orbax checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import data
from ._registry import get
from .train import evaluate, fit

__all__ = ["RECIPES", "breast_cancer_mlp", "clever_hans_cnn", "clever_hans_unet",
           "digits_steel_cam", "digits_steel_gradcam", "digits_vgg7", "mnist1d_cnn"]

Log = Callable[[str], Any] | None


def clever_hans_cnn(*, epochs: int = 3, n_train: int = 2000, n_test: int = 400, seed: int = 0,
                    log: Log = print):
    """The demo's bias-detection CNN on the Clever Hans set (marker perfectly class-correlated).

    Scores: accuracy on the biased held-out images (marker in its class's corner) and on unbiased
    ones (marker in a random corner): a model that took the shortcut scores ~1.0 and ~0.5.
    """
    train_set, biased, unbiased = data.clever_hans(n_train, n_test, seed=seed)
    net = get("clever_hans_cnn", pretrained=False, key=seed)
    net, history = fit(net, train_set.x, train_set.y, loss="cross_entropy", epochs=epochs,
                       batch_size=64, learning_rate=1e-3, key=seed, x_test=biased.x,
                       y_test=biased.y, log=log)
    scores = {
        "biased_test_accuracy": evaluate(net, biased.x, biased.y)["accuracy"],
        "unbiased_test_accuracy": evaluate(net, unbiased.x, unbiased.y)["accuracy"],
        "n_train": n_train, "n_test": n_test, "seed": seed, "epochs": epochs,
        "history": history.epochs,
    }
    return net, scores


def mnist1d_cnn(*, epochs: int = 60, seed: int = 0, log: Log = print):
    """The MNIST-1D CNN on the standard 4,000 / 1,000 split (the seed reports 0.877)."""
    split = data.mnist1d()
    net = get("mnist1d_cnn", pretrained=False, key=seed)
    net, history = fit(net, split.x_train, split.y_train, loss="cross_entropy", epochs=epochs,
                       batch_size=64, learning_rate=2e-3, key=seed, x_test=split.x_test,
                       y_test=split.y_test, log=log)
    return net, {"test_accuracy": evaluate(net, split.x_test, split.y_test)["accuracy"],
                 "seed": seed, "epochs": epochs, "history": history.epochs}


def _digits(name: str, epochs: int, seed: int, log: Log):
    split = data.digits(size=32, seed=seed)
    net = get(name, pretrained=False, key=seed, input_shape=(32, 32, 1), classes=10)
    net, history = fit(net, split.x_train, split.y_train, loss="cross_entropy", epochs=epochs,
                       batch_size=32, learning_rate=1e-3, key=seed, x_test=split.x_test,
                       y_test=split.y_test, log=log)
    return net, {"test_accuracy": evaluate(net, split.x_test, split.y_test)["accuracy"],
                 "seed": seed, "epochs": epochs, "history": history.epochs}


def digits_steel_cam(*, epochs: int = 30, seed: int = 0, log: Log = print):
    """The steel-defect CAM architecture (GAP head) on scikit-learn's digits at 32×32."""
    return _digits("steel_cam", epochs, seed, log)


def digits_steel_gradcam(*, epochs: int = 15, seed: int = 0, log: Log = print):
    """The steel-defect Grad-CAM architecture (flatten + dense head) on digits at 32×32."""
    return _digits("steel_gradcam", epochs, seed, log)


def digits_vgg7(*, epochs: int = 20, seed: int = 0, size: int = 32, log: Log = print):
    """The histopathology VGG-7 (five conv blocks, 5 poolings: size must be a multiple of 32) on
    scikit-learn's digits at ``size``×``size``×3 (grey repeated into RGB), 10 classes.

    An offline stand-in for the seed's colorectal histology tiles (224×224×3, 8 classes), small
    enough to train in minutes on two CPU cores; its scores say nothing about histology.
    """
    split = data.digits(size=size, seed=seed, channels=3)
    net = get("vgg7", pretrained=False, key=seed, input_shape=(size, size, 3), classes=10)
    net, history = fit(net, split.x_train, split.y_train, loss="cross_entropy", epochs=epochs,
                       batch_size=32, learning_rate=1e-3, key=seed, x_test=split.x_test,
                       y_test=split.y_test, log=log)
    return net, {"test_accuracy": evaluate(net, split.x_test, split.y_test)["accuracy"],
                 "seed": seed, "epochs": epochs, "size": size, "history": history.epochs}


def breast_cancer_mlp(*, epochs: int = 200, seed: int = 0, log: Log = print):
    """The tabular MLP (30 min–max scaled features, sigmoid output) on breast cancer."""
    split = data.breast_cancer(seed=seed)
    net = get("tabular_mlp", pretrained=False, key=seed, n_features=split.x_train.shape[1],
              output_activation="sigmoid", preprocessing=split.info["preprocessing"])
    net, history = fit(net, split.x_train, split.y_train, loss="binary_cross_entropy",
                       epochs=epochs, batch_size=32, learning_rate=3e-3, key=seed,
                       x_test=split.x_test, y_test=split.y_test,
                       log=None if log is None else _every(log, max(1, epochs // 10)))
    scores = evaluate(net, split.x_test, split.y_test, loss="binary_cross_entropy")
    return net, {"test_accuracy": scores["accuracy"], "seed": seed, "epochs": epochs,
                 "history": history.epochs}


def _every(log, n):
    """A logger that passes on every n-th epoch line (long tabular runs)."""
    count = {"i": 0}

    def wrapped(line):
        count["i"] += 1
        if count["i"] % n == 0:
            log(line)

    return wrapped


def clever_hans_unet(*, epochs: int = 8, n_train: int = 1000, n_test: int = 200, seed: int = 0,
                     base_filters: int = 8, log: Log = print):
    """The seed's U-Net (BCE + Dice loss, as the seed trains it) segmenting the Clever Hans
    objects: a small offline segmentation task. Score: Dice of the thresholded prediction."""
    train_set, test_set, _ = data.clever_hans(n_train, n_test, seed=seed)
    net = get("unet", pretrained=False, key=seed, input_shape=(64, 64, 1),
              base_filters=base_filters)
    masks = train_set.object_mask[..., None].astype("float32")
    test_masks = test_set.object_mask[..., None].astype("float32")
    net, history = fit(net, train_set.x, masks, loss="bce_dice", epochs=epochs, batch_size=16,
                       learning_rate=1e-3, key=seed, x_test=test_set.x, y_test=test_masks,
                       log=log)
    return net, {"test_dice": evaluate(net, test_set.x, test_masks, loss="bce_dice")["dice"],
                 "seed": seed, "epochs": epochs, "history": history.epochs}


RECIPES = {
    "clever_hans_cnn": clever_hans_cnn,
    "mnist1d_cnn": mnist1d_cnn,
    "digits_steel_cam": digits_steel_cam,
    "digits_steel_gradcam": digits_steel_gradcam,
    "digits_vgg7": digits_vgg7,
    "breast_cancer_mlp": breast_cancer_mlp,
    "clever_hans_unet": clever_hans_unet,
}
