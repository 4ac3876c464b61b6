"""Building blocks shared by the search spaces: the early-exit network and its exit policy."""
from edgenas.nn.early_exit import EarlyExitNet, exit_decisions, take_exits

__all__ = ["EarlyExitNet", "exit_decisions", "take_exits"]
