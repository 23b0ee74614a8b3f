"""Training engine on Lightning: network assembly, the task module, data module, runs."""

from .build import Network, build_network
from .run import evaluate_run, load_task, train
from .task import NonFiniteLossError, SegmentationTask

__all__ = ["Network", "NonFiniteLossError", "SegmentationTask", "build_network", "evaluate_run", "load_task", "train"]
