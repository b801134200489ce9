"""Benchmark worker: Zennit and Captum on PyTorch (run by `bench_libraries.py`).

Run with the torch venv's interpreter: ``/work/venvs/torch/bin/python benchmarks/run_torch.py``;
it speaks the `_worker` line protocol. VGG16 / the seed U-Net are rebuilt in torch (NCHW) from the
exported channels-last weights; parameters do not require gradients, so neither library computes
weight gradients (jxai never does). Methods a library lacks raise NotImplementedError (shown as
n/a): Zennit has no Grad-CAM; Captum's LRP supports no transposed convolution (U-Net).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import captum  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import zennit  # noqa: E402
from _worker import CHUNK, IG_STEPS, SMOOTHGRAD_SAMPLES, load_weights, serve  # noqa: E402
from captum.attr import (  # noqa: E402
    LRP,
    IntegratedGradients,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from torch import nn  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.attribution import IntegratedGradients as ZIntegratedGradients  # noqa: E402
from zennit.attribution import SmoothGrad as ZSmoothGrad  # noqa: E402
from zennit.composites import EpsilonPlusFlat, LayerMapComposite, layer_map_base  # noqa: E402
from zennit.rules import Epsilon  # noqa: E402
from zennit.types import Convolution  # noqa: E402

VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
STATE: dict = {}


class VGG16(nn.Module):
    """torchvision-style VGG16 without dropout; flatten in forward (Captum LRP needs no module)."""

    def __init__(self, classes=1000):
        super().__init__()
        layers, channels, self.names = [], 3, []
        for block, n, filters in VGG16_BLOCKS:
            for i in range(1, n + 1):
                layers += [nn.Conv2d(channels, filters, 3, padding=1), nn.ReLU()]
                self.names.append((len(layers) - 2, f"block{block}_conv{i}"))
                channels = filters
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc1, self.fc2 = nn.Linear(512 * 7 * 7, 4096), nn.Linear(4096, 4096)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.predictions = nn.Linear(4096, classes)
        self.cam_index = len(layers) - 2  # the ReLU after block5_conv3

    @property
    def cam_layer(self):  # not an attribute: a module registered twice confuses Captum's LRP
        return self.features[self.cam_index]

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        return self.predictions(self.relu2(self.fc2(self.relu1(self.fc1(x)))))

    def load(self, params):
        for index, name in self.names:
            _conv(self.features[index], params.pop(name))
        first = params.pop("fc1")  # rows in (h, w, c) order -> torch's (c, h, w) flatten order
        kernel = first["kernel"].reshape(7, 7, 512, -1).transpose(3, 2, 0, 1).reshape(4096, -1)
        _dense(self.fc1, {"kernel": kernel.T, "bias": first["bias"]})
        _dense(self.fc2, params.pop("fc2"))
        _dense(self.predictions, params.pop("predictions"))


class UNet(nn.Module):
    """The seed U-Net, explanation variant (linear output, flattened)."""

    def __init__(self, base=16):
        super().__init__()
        self.names: list[tuple[nn.Module, str]] = []
        counts: dict[str, int] = {}

        def name(kind):
            n = counts.get(kind, 0)
            counts[kind] = n + 1
            return kind if n == 0 else f"{kind}_{n}"

        def block(cin, cout):
            layers = []
            for c in (cin, cout):
                conv = nn.Conv2d(c, cout, 3, padding=1)
                self.names.append((conv, name("conv2d")))
                layers += [conv, nn.ReLU()]
            return nn.Sequential(*layers)

        self.down, self.ups, self.up_blocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        channels = 3
        for level in range(4):
            self.down.append(block(channels, base * 2**level))
            channels = base * 2**level
        self.pool = nn.MaxPool2d(2)
        self.bottom = block(channels, base * 16)
        channels = base * 16
        for level in range(3, -1, -1):
            up = nn.ConvTranspose2d(channels, base * 2**level, 2, stride=2)
            self.names.append((up, name("conv2d_transpose")))
            self.ups.append(up)
            self.up_blocks.append(block(base * 2**level * 2, base * 2**level))
            channels = base * 2**level
        self.out = nn.Conv2d(channels, 1, 1)
        self.names.append((self.out, name("conv2d")))

    @property
    def cam_layer(self):  # the ReLU of the last 3x3 convolution
        return self.up_blocks[-1][-1]

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return torch.flatten(self.out(x), 1)

    def load(self, params):
        for module, name in self.names:
            _conv(module, params.pop(name))


def _conv(module, p):
    # Keras/Flax conv kernels are (kh, kw, in, out); transposed ones (kh, kw, out, in).
    # torch Conv2d wants (out, in, kh, kw), ConvTranspose2d (in, out, kh, kw): the same permutation
    module.weight.data = torch.from_numpy(np.ascontiguousarray(p["kernel"].transpose(3, 2, 0, 1)))
    module.bias.data = torch.from_numpy(p["bias"])


def _dense(module, p):
    module.weight.data = torch.from_numpy(np.ascontiguousarray(p["kernel"].T))
    module.bias.data = torch.from_numpy(p["bias"])


def setup(model, weights, inputs, labels, forward_out):
    net = {"vgg16": VGG16, "unet": UNet}[model]()
    params = load_weights(weights)
    net.load(params)
    if params:
        raise ValueError(f"weights not used by the torch model: {sorted(params)}")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(np.load(inputs).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        np.save(forward_out, net(x).numpy())
    label_array = np.load(labels)
    outputs = np.load(forward_out).shape[1]
    STATE.update(net=net, x=x, labels=torch.from_numpy(label_array),
                 one_hot=torch.eye(outputs)[torch.from_numpy(label_array)],
                 spread=float(x.max() - x.min()))
    return {"library": f"zennit {zennit.__version__ if hasattr(zennit, '__version__') else ''} "
                       f"/ captum {captum.__version__} / torch {torch.__version__}"}


def _nhwc(t):
    a = t.detach().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 and a.shape[1] != 1 else a


def _zennit(attributor_cls, composite=None, **kwargs):
    net, x = STATE["net"], STATE["x"].clone().requires_grad_(True)
    with attributor_cls(model=net, composite=composite, **kwargs) as attributor:
        _, relevance = attributor(x, STATE["one_hot"])
    return _nhwc(relevance)


def _epsilon_composite():
    return LayerMapComposite(layer_map=layer_map_base() + [
        (Convolution, Epsilon()), (torch.nn.Linear, Epsilon())])


def run(method, library):
    net, x, labels = STATE["net"], STATE["x"], STATE["labels"]
    if library == "zennit":
        if method == "gradient":
            return _zennit(Gradient)
        if method == "lrp.epsilon":
            return _zennit(Gradient, _epsilon_composite())
        if method == "lrp.epsilon_plus_flat":
            return _zennit(Gradient, EpsilonPlusFlat())
        if method == "integrated_gradients":
            return _zennit(ZIntegratedGradients, n_iter=IG_STEPS)
        if method == "smoothgrad":
            return _zennit(ZSmoothGrad, noise_level=0.15, n_iter=SMOOTHGRAD_SAMPLES)
    elif library == "captum":
        x = x.clone().requires_grad_(True)
        if method == "gradient":
            return _nhwc(Saliency(net).attribute(x, target=labels, abs=False))
        if method == "lrp.epsilon" and isinstance(net, VGG16):
            return _nhwc(LRP(net).attribute(x, target=labels))
        if method == "integrated_gradients":
            return _nhwc(IntegratedGradients(net).attribute(
                x, target=labels, n_steps=IG_STEPS, internal_batch_size=CHUNK * len(x)))
        if method == "smoothgrad":
            return _nhwc(NoiseTunnel(Saliency(net)).attribute(
                x, nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES,
                nt_samples_batch_size=CHUNK, stdevs=0.15 * STATE["spread"], target=labels,
                abs=False))
        if method == "grad_cam":
            return _nhwc(LayerGradCam(net, net.cam_layer).attribute(x, target=labels))[:, 0]
    raise NotImplementedError(f"{method} is not available in {library} for this model")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    serve(setup, run)
