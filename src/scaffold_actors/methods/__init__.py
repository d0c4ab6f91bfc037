"""Inference-time compute methods as native controllers."""

from ._answers import extract_answer, extract_boxed, normalize_number
from ._best_of_n import BestOfN
from ._majority_vote import MajorityVote, vote_is_decided
from ._sampler import Sampler, fresh_task

__all__ = [
    "BestOfN",
    "MajorityVote",
    "Sampler",
    "extract_answer",
    "extract_boxed",
    "fresh_task",
    "normalize_number",
    "vote_is_decided",
]
