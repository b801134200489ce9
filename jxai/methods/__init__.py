"""The built-in methods, registered into `jxai.explain` when ``jxai`` is imported.

Each module registers its methods with `jxai.register_method` (the contract: `jxai.contract`):
``gradient``, ``input_t_gradient``, ``guided_backprop``, ``deconvnet`` (`gradient`);
``smoothgrad``, ``smoothgrad_sq``, ``vargrad`` (`noise`); ``integrated_gradients``,
``expected_gradients``, ``gradient_shap`` (`path`); ``cam``, ``grad_cam``, ``grad_cam_pp``,
``layer_cam``, ``guided_grad_cam`` (`cam`); ``occlusion`` (`occlusion`); the LRP presets and
``lrp`` (`lrp`); and every other public module of this package (a new file here is registered
without editing this one).
"""

import importlib
import pkgutil

from jxai.methods import cam, gradient, lrp, noise, occlusion, path
from jxai.methods.path import quadrature

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["cam", "gradient", "lrp", "noise", "occlusion", "path", "quadrature"]
