"""Data tools for demos and tests: a synthetic non-IID text task and a partitioner of a labelled
file.
"""
