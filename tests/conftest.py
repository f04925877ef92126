import os

import pytest
import torch

os.environ.setdefault("NETPRESS_QUIET", "1")
torch.set_num_threads(2)

from netpress import zoo  # noqa: E402
from netpress.data.datasets import FASHION_MNIST_DEFAULT, FASHION_MNIST_ENV  # noqa: E402

FASHION_MNIST = os.path.isdir(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DEFAULT))
TRAINED = sorted(zoo.load_manifest())

needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST, reason="Fashion-MNIST not installed (make data)")
