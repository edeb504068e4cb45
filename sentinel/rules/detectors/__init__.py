"""sentinel.rules.detectors."""
