"""``fedge export``: a run's global model as a signed int8 ONNX artifact, with its held-out
accuracy.
"""
