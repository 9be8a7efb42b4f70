"""Analysis of pixels: quality gate, preprocessing, network, loading, training, evaluation.

Only the modules that need TensorFlow import it, so the quality gate and the card load without it.
"""
