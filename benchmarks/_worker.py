"""The line protocol between `bench_libraries.py` and its per-library worker processes.

Stdlib + numpy only, so each library's own virtual environment can import it. The driver writes
one JSON request per line (``{"cmd": "setup" | "run" | "quit", "args": {...}}``) to the worker's
stdin; the worker answers one JSON line on the original stdout. Everything the libraries print
(TensorFlow's logs, warnings) is redirected to stderr so it cannot break the protocol.

Shared conventions: weights are an ``.npz`` of ``"<layer>/kernel"`` and ``"<layer>/bias"`` in
Keras/Flax layout (conv kernels HWIO, dense kernels (in, out)); inputs ``(B, H, W, C)`` float32
(channels last); labels ``(B,)`` int, the flattened output index explained for each image.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

# benchmark method keys, shared by the driver and every worker
METHODS = ("gradient", "lrp.epsilon", "lrp.sequential_preset_a_flat", "lrp.epsilon_plus_flat",
           "integrated_gradients", "smoothgrad", "grad_cam")
IG_STEPS = 32
SMOOTHGRAD_SAMPLES = 32
CHUNK = 16  # Captum's path points / noise samples per call (jxai uses its own default)


def load_weights(path: str) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {"kernel": ..., "bias": ...}}`` from the shared ``.npz``."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            layer, name = key.rsplit("/", 1)
            layers.setdefault(layer, {})[name] = data[key]
    return layers


def serve(setup, run) -> None:
    """Answer requests until ``quit``: ``setup(**args) -> dict``, ``run(method, save) -> array``.

    ``run`` returns the attribution (channels last, or as the library gives it for Grad-CAM);
    the worker times it (wall clock, the result materialised in host memory) and saves it to
    ``save`` when asked.
    """
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        command, args = request["cmd"], request.get("args", {})
        try:
            if command == "quit":
                protocol.write(json.dumps({"ok": True}) + "\n")
                return
            if command == "setup":
                reply = setup(**args)
            elif command == "run":
                save = args.pop("save", None)
                start = time.perf_counter()
                attribution = run(**args)
                seconds = time.perf_counter() - start
                if save:
                    np.save(save, np.asarray(attribution, np.float32))
                reply = {"seconds": seconds}
            else:
                raise ValueError(f"unknown command {command!r}")
            protocol.write(json.dumps({"ok": True, **reply}) + "\n")
        except Exception:
            protocol.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")
