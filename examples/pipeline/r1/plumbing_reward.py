"""A dense stand-in reward for the tiny R1-Reward twin (``recipes/tiny/r1-reward.yaml``).

A random tiny model never writes a well-formed ``<think>...</think><answer>K</answer>``, so
every R1-Reward reward (format, accuracy, consistency) is 0 for it, every advantage is 0 and the
policy never moves. This reward, the fraction of letters in the completion, varies between
random completions, so the twin's RL stage updates its policy and its second PPO mini-batch
really is off-policy (``policy/update2/*`` in its metrics). It measures nothing about judging.
"""

from __future__ import annotations


def letter_fraction(completion: str) -> float:
    """Fraction of the completion's characters that are letters (0 for an empty one)."""
    return sum(ch.isalpha() for ch in completion) / max(1, len(completion))
