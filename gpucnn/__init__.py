"""gpucnn: convolutional neural networks from their mathematics.

``import gpucnn`` needs NumPy alone (plus numba and requests as installed dependencies);
CuPy and numba.cuda are imported only by gpucnn.backend when a GPU is asked for.
"""

from gpucnn import backend, functional, models, nn, optim
from gpucnn.backend import get_backend, to_device, to_host
from gpucnn.functional import softmax

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backend",
    "functional",
    "get_backend",
    "models",
    "nn",
    "optim",
    "softmax",
    "to_device",
    "to_host",
]
