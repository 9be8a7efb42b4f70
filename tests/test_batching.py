"""Fixed batch shapes for accelerators: padding is invisible in the results."""
from __future__ import annotations


def test_padding_to_fixed_batch_sizes_on_a_gpu(tiny_model_path):
    import numpy as np

    from model.loader import load_classifier

    classifier = load_classifier(tiny_model_path)
    batch = np.ones((5, 224, 224, 3), np.float32)
    assert classifier.padded(batch) is batch or not classifier.on_gpu  # CPU: no extra work
    classifier.on_gpu = True
    padded = classifier.padded(batch)
    assert padded.shape[0] == 8 and (padded[:5] == batch).all() and not padded[5:].any()
    assert classifier.padded(np.ones((8, 224, 224, 3), np.float32)).shape[0] == 8
    probs = classifier.predict(padded)[:5]
    np.testing.assert_allclose(probs, classifier.predict(batch), atol=1e-6)
