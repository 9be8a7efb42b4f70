"""The Flask portal: upload, batch pages, JSON API. Never imports TensorFlow."""
