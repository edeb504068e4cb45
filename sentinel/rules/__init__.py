"""sentinel.rules."""
