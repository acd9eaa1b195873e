"""The data holder inside a Flower run: the ClientApp (Flower adapter), the Flower-free privacy
transaction of a round, and the protected-aggregation modes (SecAgg+, CKKS)."""
