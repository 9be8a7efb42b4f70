"""Helpers the test suite and the scripts share: generated photographs (`imagegen`) and the real
processes a test or a benchmark starts (`processes`). Scripts never import `tests`."""
