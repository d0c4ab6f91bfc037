"""TensorRT-LLM Scaffolding's DeepConf contrib project (Deep Think with
Confidence) under its names: confidence measured from each token's top
logprobs, traces cut once a window of tokens falls below a threshold, and votes
weighted or filtered by the traces' confidence.

``DeepConfOfflineController`` and ``DeepConfOnlineController`` wrap one
generation (the online one streams it and cancels it in the engine when its
confidence drops); ``DeepConfOfflineMajorityVoteController`` votes over
``sample_num`` offline traces; ``DeepConfOnlineMajorityVoteController`` runs
``warmup_sample_num`` offline traces, sets the online traces' threshold from
them, then votes over all.  The native method with the same paper is
:class:`scaffold_actors.methods.DeepConf`.

The confidence needs each token's most likely alternatives: ask for them with
``num_logprobs`` (TensorRT-LLM's examples ask for 20).  A worker that returns
only the sampled token's logprob gives a one-value mean (the sampled token's);
a worker that returns none fails the controller with :class:`ValueError`
(no confidence is made up).
"""

from ._confidence import VOTE_POLICIES, ConfidenceInfo, majority_vote
from ._controllers import (
    DeepConfOfflineController,
    DeepConfOfflineMajorityVoteController,
    DeepConfOnlineController,
    DeepConfOnlineMajorityVoteController,
)

__all__ = [
    "VOTE_POLICIES",
    "ConfidenceInfo",
    "DeepConfOfflineController",
    "DeepConfOfflineMajorityVoteController",
    "DeepConfOnlineController",
    "DeepConfOnlineMajorityVoteController",
    "majority_vote",
]
