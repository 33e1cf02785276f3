"""The complexity lab: count the MACs that run, check the papers' formulas, measure growth."""
from minivit.complexity import formulas  # noqa: F401
from minivit.complexity.counting import MacCount, count_macs, count_params, op_macs  # noqa: F401
