"""Names and constants shared by the algorithm definitions and the tensor math (no torch)."""

import math

# StableReinforce pre-clip: the log-ratio is clamped to [ln 1e-3, ln 1e3] before exp.
PRECLIP_BOUNDS = (math.log(1e-3), math.log(1e3))
AGGREGATIONS = ("token_mean", "seq_mean", "constant")
KL_MODES = ("none", "k1_reward", "k3_loss")
FILTER_RULES = ("paper", "released")
