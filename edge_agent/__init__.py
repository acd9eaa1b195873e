"""The edge device: MQTT agent, protocol, artifact updater, ONNX Runtime inference, ``fedge-agent``.

It installs with ``fedge[edge]`` alone and never imports torch, flwr, opacus, transformers or
libcloud; artifacts arrive over plain HTTP(S) from presigned URLs.
"""
