"""The federated run on the coordinator: the ServerApp, the round driver and its replies,
strategies, checkpoints and metrics, protected aggregation (SecAgg+, HE) and the two Flower
engines.
"""
