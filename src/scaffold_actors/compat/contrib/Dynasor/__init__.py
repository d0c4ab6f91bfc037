"""TensorRT-LLM Scaffolding's Dynasor contrib project (Dynasor-CoT, probe the
reasoning for its answer and stop once the probes agree), under its names.

:class:`DynasorGenerationController` is the generator controller TensorRT-LLM's
examples build; the native method with the same idea, whose probes run while the
reasoning goes on and which aborts the reasoning in the engine, is
:class:`scaffold_actors.methods.DynasorCoT`.
"""

from ._controller import DynasorGenerationController
from ._evaluator import equal_group

__all__ = ["DynasorGenerationController", "equal_group"]
