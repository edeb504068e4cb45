"""What a training script imports: Reporter, CheckpointStore, SkipPlan, rollback."""

from sentinel.train.asyncsave import AsyncCheckpointer
from sentinel.train.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    CheckpointStore,
    restore_training_state,
    training_state,
)
from sentinel.train.data import DataPosition, EpochShuffleSampler, ResumableBatches
from sentinel.train.reporter import Reporter
from sentinel.train.request import RollbackRequest
from sentinel.train.rollback import RollbackHandler
from sentinel.train.skipplan import SkipPlan, SkipPlanError

__all__ = [
    "AsyncCheckpointer",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointStore",
    "DataPosition",
    "EpochShuffleSampler",
    "Reporter",
    "ResumableBatches",
    "RollbackHandler",
    "RollbackRequest",
    "SkipPlan",
    "SkipPlanError",
    "restore_training_state",
    "training_state",
]
