"""The seed networks as Flax modules (importable as `jxai.models`).

    import jxai
    net = jxai.models.get("clever_hans_cnn")        # a jxai.Network with its trained weights
    net = jxai.models.get("unet", pretrained=False) # random weights (none ship): no warning
    jxai.models.pretrained_names()                  # the names whose trained weights ship
    jxai.models.NAMES                               # every registered model
    x = jxai.models.preprocess(net, raw_images)     # the model's own input preprocessing

Models (`NAMES`): ``unet`` / ``unet_explain`` (breast-cancer U-Net), ``chest_xray`` (VGG16 +
extra block), ``vgg7`` (histopathology), ``mnist1d_cnn``, ``steel_cam`` / ``steel_gradcam``,
``tabular_mlp``, ``clever_hans_cnn`` (the demo's bias-detection CNN), and the transformers
``vit``, ``bert`` and ``llama`` (random weights here; published checkpoints through
`jxai.load_pretrained`). Offline datasets live in
`jxai.models.data` and `jxai.models.clever_hans`, training in `jxai.models.train`, orbax
checkpoints in `jxai.models.checkpoint`.
"""

from . import (  # noqa: F401
    bert,
    bias_cnn,
    checkpoint,
    chest_xray,
    clever_hans,
    data,
    llama,
    mnist1d_cnn,
    preprocessing,
    recipes,
    steel_cam,
    tabular_mlp,
    train,
    unet,
    vgg7,
    vit,
)
from ._registry import (
    NAMES,
    ModelSpec,
    get,
    get_module,
    load_zoo_checkpoint,
    pretrained_names,
    spec,
    zoo_record,
)
from .preprocessing import preprocess

__all__ = [
    "NAMES",
    "ModelSpec",
    "checkpoint",
    "clever_hans",
    "data",
    "get",
    "get_module",
    "load_zoo_checkpoint",
    "preprocess",
    "preprocessing",
    "pretrained_names",
    "recipes",
    "spec",
    "train",
    "zoo_record",
]
