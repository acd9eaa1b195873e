"""The data holder's side: Flower ClientApp, DP fine-tuning, privacy ledger, ``fedge-client``.

A data holder holds no cloud credentials: this package never imports ``cloud_adapters``.
"""

import os

# Models load from local folders only; set before any module imports huggingface_hub, which
# reads it once at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
