"""sentinel.train."""
