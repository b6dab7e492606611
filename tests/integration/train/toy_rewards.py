"""Verifiable toy rewards for the training tests (loaded by recipes as ``file.py:function``).

The random tiny model writes near-random tokens, so the judge rewards are always 0 for it.
These rewards look at the completion text only and are non-zero for a good share of random
completions, which is what a test of the update direction needs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def starts_with_space(completion: str) -> float:
    """1.0 when the completion starts with a space (a word-start token), else 0.0.

    About a quarter of the tiny tokenizer's tokens start a word, so a random policy scores
    about 0.25; a policy that learnt the task scores 1.
    """
    return 1.0 if completion[:1] == " " else 0.0


def alpha_fraction(completion: str) -> float:
    """Fraction of letters in the completion (a dense reward that varies between samples)."""
    return sum(ch.isalpha() for ch in completion) / max(1, len(completion))


def blocking_alpha_fraction(completion: str, sample_id: str) -> float:
    """:func:`alpha_fraction`, but once ``RMKIT_TEST_BLOCK_AFTER`` calls have been made in this
    process, write ``RMKIT_TEST_BLOCK_FILE`` and sleep, so a test can kill the run at a known
    point (after the checkpoint of the previous step)."""
    after = int(os.environ.get("RMKIT_TEST_BLOCK_AFTER", "0") or 0)
    blocking_alpha_fraction.calls = getattr(blocking_alpha_fraction, "calls", 0) + 1
    if after and blocking_alpha_fraction.calls > after:
        Path(os.environ["RMKIT_TEST_BLOCK_FILE"]).write_text(sample_id)
        time.sleep(600)
    return alpha_fraction(completion)


def starts_with_letter(completion: str) -> float:
    """1.0 when the completion's first character is a letter (about half of random samples)."""
    return 1.0 if completion[:1].isalpha() else 0.0


def failing_alpha_fraction(completion: str) -> float:
    """:func:`alpha_fraction`, but once ``RMKIT_TEST_FAIL_AFTER`` calls have been made by this
    copy of the module (each run loads its own), raise: a run that crashes at a known point in
    the same process (after the checkpoint of the previous step)."""
    after = int(os.environ.get("RMKIT_TEST_FAIL_AFTER", "0") or 0)
    failing_alpha_fraction.calls = getattr(failing_alpha_fraction, "calls", 0) + 1
    if after and failing_alpha_fraction.calls > after:
        raise RuntimeError("simulated crash")
    return alpha_fraction(completion)
