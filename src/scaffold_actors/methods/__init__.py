"""Inference-time compute methods as native controllers."""

from ._agent import ReActAgent
from ._answers import (
    cut_answer,
    extract_answer,
    extract_boxed,
    math_equivalent,
    normalize_number,
    sample_answer,
)
from ._best_of_n import BestOfN
from ._deepconf import DeepConf, group_confidences, trace_confidence
from ._dynasor import DynasorCoT
from ._instructions import ByQuestionKind, asks_for_a_number
from ._majority_vote import MajorityVote, vote_is_decided
from ._sampler import Sampler, fresh_task, sample_within_budget
from ._streaming import StreamUntil
from ._tree_search import MCTS, BeamSearch, BestFirstSearch, DiverseVerifierTreeSearch, StepSearch
from ._voting import (
    AdaptiveConsistency,
    LeaderDecided,
    StopRule,
    VoteState,
    WindowAgreement,
    beta_majority_confidence,
)

__all__ = [
    "MCTS",
    "AdaptiveConsistency",
    "BeamSearch",
    "BestFirstSearch",
    "BestOfN",
    "ByQuestionKind",
    "DeepConf",
    "DiverseVerifierTreeSearch",
    "DynasorCoT",
    "LeaderDecided",
    "MajorityVote",
    "ReActAgent",
    "Sampler",
    "StepSearch",
    "StopRule",
    "StreamUntil",
    "VoteState",
    "WindowAgreement",
    "asks_for_a_number",
    "beta_majority_confidence",
    "cut_answer",
    "extract_answer",
    "extract_boxed",
    "fresh_task",
    "group_confidences",
    "math_equivalent",
    "normalize_number",
    "sample_answer",
    "sample_within_budget",
    "trace_confidence",
    "vote_is_decided",
]
