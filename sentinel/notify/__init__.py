"""sentinel.notify."""
