"""MiniGlot engine: headless compression of multilingual encoders (never imports Qt)."""

import os

__version__ = "0.1.0"

# transformers (>= 5.25) swaps layers for kernels downloaded from the Hugging Face hub when the `kernels` package is
# installed: code from the network, like trust_remote_code, and results that depend on what was fetched. MiniGlot
# runs the models' own PyTorch code everywhere (the bundle leaves `kernels` out); USE_HUB_KERNELS=YES opts back in.
os.environ.setdefault("USE_HUB_KERNELS", "NO")
