"""The data holder's side: Flower ClientApp, DP fine-tuning, privacy ledger, ``fedge-client``.

A data holder holds no cloud credentials: this package never imports ``cloud_adapters``.
"""
