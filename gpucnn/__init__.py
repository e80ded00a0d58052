"""gpucnn: convolutional neural networks from their mathematics.

``import gpucnn`` needs NumPy alone (plus numba and requests as installed dependencies);
CuPy and numba.cuda are imported only by gpucnn.backend when a GPU is asked for.

    model = gpucnn.load("runs/<run>/checkpoints/best.npz")   # a Predictor
    model.predict(images)                                      # class indices

The checkpoint and dataset machinery that ``load`` needs is imported when it is called, and
onnx only inside gpucnn.export.onnx.
"""

from gpucnn import backend, export, functional, models, nn, optim
from gpucnn.backend import get_backend, to_device, to_host
from gpucnn.backend.cpu.threads import get_num_threads, set_num_threads
from gpucnn.functional import softmax
from gpucnn.grad_mode import is_grad_enabled, no_grad
from gpucnn.inference import Predictor, load
from gpucnn.version import __version__

__all__ = [
    "__version__",
    "Predictor",
    "backend",
    "export",
    "functional",
    "get_backend",
    "get_num_threads",
    "is_grad_enabled",
    "load",
    "models",
    "nn",
    "no_grad",
    "optim",
    "set_num_threads",
    "softmax",
    "to_device",
    "to_host",
]
