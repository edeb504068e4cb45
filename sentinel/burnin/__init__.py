"""sentinel.burnin."""
