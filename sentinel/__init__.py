"""sentinel: monitoring, diagnosis and recovery for long GPU training runs."""

__version__ = "0.1.0"
