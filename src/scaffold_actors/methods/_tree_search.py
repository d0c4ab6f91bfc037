"""Tree search over reasoning steps, guided by a process reward model."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import attrs

from engine_bridge import PrefixGroup

from .._budget import TokenBudgetExhaustedError
from .._context import RequestContext
from .._tasks import GenerationTask, RewardTask
from ._answers import extract_answer, extract_boxed
from ._best_of_n import question_of
from ._sampler import Sampler, fresh_task, result_from

__all__ = ["MCTS", "BeamSearch", "BestFirstSearch", "DiverseVerifierTreeSearch", "StepSearch"]


def _has_boxed(step: str) -> bool:
    return extract_boxed(step) is not None


@attrs.define(eq=False)
class _Node:
    steps: list[str]
    score: float = 0.0
    terminal: bool = False
    parent: _Node | None = None
    children: list[_Node] = attrs.field(factory=list)
    visits: int = 0
    value_sum: float = 0.0

    def text(self, delimiter: str) -> str:
        return delimiter.join(self.steps)


@attrs.frozen
class StepSearch:
    """What every tree search shares: how a step is generated and scored.

    A step is what the model writes up to ``step_delimiter`` (``"\\n\\n"``), with
    ``step_sampler``'s sampling parameters (its ``max_tokens`` bounds one step);
    a partial solution is continued with the engine's ``continuation``.  A node
    is final when ``is_final(step)`` (default: the step holds ``\\boxed{}``), the
    step is empty, or it is the ``max_steps``-th step.  Partial solutions are
    scored in one :class:`RewardTask` per expansion (``step_separator`` set, so
    a process reward worker scores each step; its aggregate is the node score).
    """

    step_sampler: Sampler = attrs.field(factory=lambda: Sampler(max_tokens=256, temperature=0.8))
    step_delimiter: str = "\n\n"
    max_steps: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    reward_tag: Any = "reward"
    is_final: Callable[[str], bool] = _has_boxed
    extract: Callable[[str | None], str | None] = extract_answer

    async def expand(
        self, ctx: RequestContext, task: GenerationTask, node: _Node, k: int
    ) -> list[_Node]:
        """``k`` sampled next steps of ``node``, concurrently."""
        prefix = node.text(self.step_delimiter)
        if node.steps:
            prefix += self.step_delimiter
        tasks = []
        group = PrefixGroup(k)  # the children share the prompt and the node's text
        for _ in range(k):
            t = self.step_sampler.prepare(fresh_task(task))
            t.prefix_group = group
            t.stop = [*t.stop, self.step_delimiter]
            t.continuation = (t.continuation or "") + prefix if prefix else t.continuation
            tasks.append(t)
        outs = await ctx.run_all(tasks)
        children = []
        for out in outs:
            step = (out.output_str or "").strip("\n")
            steps = [*node.steps, step]
            final = not step.strip() or self.is_final(step) or len(steps) >= self.max_steps
            children.append(_Node(steps, terminal=final, parent=node))
        node.children.extend(children)
        return children

    async def score(self, ctx: RequestContext, question: str, nodes: list[_Node]) -> None:
        if not nodes:
            return
        reward = await ctx.run(
            RewardTask(
                worker_tag=self.reward_tag,
                input_str=question,
                candidates=[n.text(self.step_delimiter) for n in nodes],
                step_separator=self.step_delimiter,
            )
        )
        scores = reward.scores or []
        if len(scores) != len(nodes):
            raise ValueError(
                f"the reward worker returned {len(scores)} scores for {len(nodes)} candidates"
            )
        for n, s in zip(nodes, scores, strict=True):
            n.score = float(s)

    def result(
        self, task: GenerationTask, best: _Node | None, details: dict[str, Any]
    ) -> GenerationTask:
        if best is None or not best.steps:
            return result_from(task, None, {"answer": None, **details})
        winner = fresh_task(task)
        winner.output_str = best.text(self.step_delimiter)
        winner.finish_reason = "stop" if best.terminal else "length"
        return result_from(
            task,
            winner,
            {
                "answer": self.extract(winner.output_str),
                "score": best.score,
                "steps": len(best.steps),
                **details,
            },
        )


async def _beam(
    search: StepSearch,
    ctx: RequestContext,
    task: GenerationTask,
    width: int,
    expansions: int,
    stats: dict[str, int],
) -> tuple[list[_Node], list[_Node]]:
    """Beam search; returns (finished nodes, last frontier)."""
    question = question_of(task)
    frontier = [_Node([])]
    finished: list[_Node] = []
    try:
        while frontier and len(finished) < width:
            children: list[_Node] = []

            async def grow(node: _Node, into: list[_Node]) -> None:
                into.extend(await search.expand(ctx, task, node, expansions))

            async with ctx.parallel() as par:
                for node in frontier:
                    par.start(grow, node, children)
            stats["expanded"] += len(frontier)
            await search.score(ctx, question, children)
            children.sort(key=lambda n: -n.score)
            finished.extend(n for n in children if n.terminal)
            frontier = [n for n in children if not n.terminal][:width]
    except TokenBudgetExhaustedError:
        stats["budget_exhausted"] = 1
    return finished, frontier


def _best(*groups: list[_Node]) -> _Node | None:
    for group in groups:
        if group:
            return max(group, key=lambda n: n.score)
    return None


@attrs.frozen
class BeamSearch:
    """Step-level beam search with a process reward model: every beam is
    extended by ``expansions`` sampled steps, all candidates are scored, and the
    ``beam_width`` best partial solutions go on, until ``beam_width`` solutions
    are final.  Returns the best-scored final solution.

    Paper: Snell et al., "Scaling LLM Test-Time Compute Optimally can be More
    Effective than Scaling Model Parameters" (2024); Yao et al., "Tree of
    Thoughts" (2023) for search over steps.
    """

    search: StepSearch = attrs.field(factory=StepSearch)
    beam_width: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    expansions: int = attrs.field(default=4, validator=attrs.validators.ge(1))

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask:
        stats = {"expanded": 0, "budget_exhausted": 0}
        finished, frontier = await _beam(
            self.search, ctx, task, self.beam_width, self.expansions, stats
        )
        return self.search.result(
            task, _best(finished, frontier), {"finished": len(finished), **stats}
        )


@attrs.frozen
class DiverseVerifierTreeSearch:
    """DVTS: ``subtrees`` independent beam searches (width 1, ``expansions``
    candidates per step) run concurrently, so the solutions come from different
    subtrees; returns the best-scored final solution of all.

    Paper: Beeching, Tunstall, Rush, "Scaling test-time compute with open
    models" (Hugging Face, 2024).
    """

    search: StepSearch = attrs.field(factory=StepSearch)
    subtrees: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    expansions: int = attrs.field(default=4, validator=attrs.validators.ge(1))

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask:
        stats = {"expanded": 0, "budget_exhausted": 0}
        results: list[tuple[list[_Node], list[_Node]]] = []

        async def subtree() -> None:
            results.append(await _beam(self.search, ctx, task, 1, self.expansions, stats))

        async with ctx.parallel() as par:
            for _ in range(self.subtrees):
                par.start(subtree)
        finished = [n for f, _ in results for n in f]
        frontier = [n for _, fr in results for n in fr]
        return self.search.result(
            task, _best(finished, frontier), {"finished": len(finished), **stats}
        )


@attrs.frozen
class BestFirstSearch:
    """Always expand the best-scored open node (``expansions`` children each),
    until a final node is the best open one or ``max_expansions`` nodes were
    expanded; returns the best final solution found (else the best node)."""

    search: StepSearch = attrs.field(factory=StepSearch)
    expansions: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    max_expansions: int = attrs.field(default=16, validator=attrs.validators.ge(1))

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask:
        question = question_of(task)
        tie = itertools.count()
        heap: list[tuple[float, int, _Node]] = [(0.0, next(tie), _Node([]))]
        finished: list[_Node] = []
        seen: list[_Node] = []
        stats = {"expanded": 0, "budget_exhausted": 0}
        try:
            while heap and stats["expanded"] < self.max_expansions:
                _, _, node = heapq.heappop(heap)
                if node.terminal:
                    finished.append(node)
                    break
                children = await self.search.expand(ctx, task, node, self.expansions)
                stats["expanded"] += 1
                await self.search.score(ctx, question, children)
                seen.extend(children)
                for c in children:
                    heapq.heappush(heap, (-c.score, next(tie), c))
        except TokenBudgetExhaustedError:
            stats["budget_exhausted"] = 1
        finished += [n for n in seen if n.terminal and n not in finished]
        return self.search.result(task, _best(finished, seen), {"finished": len(finished), **stats})


@attrs.frozen
class MCTS:
    """Monte Carlo tree search over steps: select by UCT (``exploration``),
    expand a leaf with ``expansions`` sampled steps, take each new node's process
    reward as its value and back it up to the root; ``iterations`` rounds.
    Returns the best-scored final solution found (else the deepest node on the
    most-visited path).

    Paper: Kocsis & Szepesvari, "Bandit based Monte-Carlo Planning" (2006);
    for LLM reasoning e.g. Zhang et al., "ReST-MCTS*" (2024).
    """

    search: StepSearch = attrs.field(factory=StepSearch)
    iterations: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    expansions: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    exploration: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))

    def _uct(self, c: _Node, parent_visits: int) -> float:
        if c.visits == 0:
            return math.inf
        exploit = c.value_sum / c.visits
        return exploit + self.exploration * math.sqrt(math.log(parent_visits) / c.visits)

    def _select(self, root: _Node) -> _Node:
        node = root
        while node.children:
            open_children = [c for c in node.children if not (c.terminal and c.visits)]
            if not open_children:
                return node
            parent_visits = max(node.visits, 1)
            node = max(open_children, key=lambda c: self._uct(c, parent_visits))
            if node.terminal:
                return node
        return node

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask:
        question = question_of(task)
        root = _Node([])
        finished: list[_Node] = []
        stats = {"expanded": 0, "budget_exhausted": 0, "iterations": 0}
        try:
            for _ in range(self.iterations):
                stats["iterations"] += 1
                leaf = self._select(root)
                if leaf is root and root.children:
                    break  # every branch has been explored to a final step
                if leaf.terminal or leaf.children:
                    new = [leaf]  # re-visit: back up its value again
                else:
                    new = await self.search.expand(ctx, task, leaf, self.expansions)
                    stats["expanded"] += 1
                    await self.search.score(ctx, question, new)
                    finished += [n for n in new if n.terminal]
                for n in new:
                    v = n.score
                    cur: _Node | None = n
                    while cur is not None:
                        cur.visits += 1
                        cur.value_sum += v
                        cur = cur.parent
        except TokenBudgetExhaustedError:
            stats["budget_exhausted"] = 1
        best = _best(finished)
        if best is None:
            node = root
            while node.children:
                node = max(node.children, key=lambda c: c.visits)
            best = node
        return self.search.result(task, best, {"finished": len(finished), **stats})
