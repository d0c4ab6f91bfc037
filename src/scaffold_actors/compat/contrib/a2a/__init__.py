"""TensorRT-LLM Scaffolding's A2A contrib project: a controller that delegates
to remote agents (as tool calls) and a worker over agent connections."""

from ._controller import A2AController
from ._tasks import A2AListTask, A2ASendTask
from ._worker import A2AWorker, AgentInfo

__all__ = ["A2AController", "A2AListTask", "A2ASendTask", "A2AWorker", "AgentInfo"]
