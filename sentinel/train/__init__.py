"""What a training script imports: Reporter, CheckpointStore, SkipPlan, rollback."""

from sentinel.train.reporter import Reporter

__all__ = ["Reporter"]
