"""What the data holder and the coordinator must agree on: the model definition and the
labelled-data reader. The one part of ``client`` that ``server`` may import (export builds and
scores through it).
"""
