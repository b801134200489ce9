"""Gradient, path, noise, CAM and occlusion methods (registered into `jxai.explain`).

Importing this package registers: ``gradient``, ``input_t_gradient``, ``guided_backprop``,
``deconvnet`` (`gradient`); ``smoothgrad``, ``smoothgrad_sq``, ``vargrad`` (`noise`);
``integrated_gradients``, ``expected_gradients``, ``gradient_shap`` (`path`); ``cam``,
``grad_cam``, ``grad_cam_pp``, ``layer_cam``, ``guided_grad_cam`` (`cam`); ``occlusion``
(`occlusion`).
"""

from jxai.methods import cam, gradient, noise, occlusion, path
from jxai.methods.path import quadrature

__all__ = ["cam", "gradient", "noise", "occlusion", "path", "quadrature"]
