"""TensorRT-LLM's ``PyTorchWorker``: a transformers model in this process, no engine."""

from __future__ import annotations

import inspect
import threading
from typing import Any, ClassVar, NamedTuple

import anyio
import anyio.to_thread

from .._tasks import GenerationTask, RewardTask, StreamGenerationTask, Task, TaskStatus
from .._worker import Handler, Worker

__all__ = ["Logprob", "PyTorchWorker"]


class Logprob(NamedTuple):
    """One token's log probability and its rank among the vocabulary (1: the most
    likely), as TensorRT-LLM reports them (``task.logprobs``: one
    ``{token_id: Logprob}`` dict per generated token)."""

    logprob: float
    rank: int | None = None


class _Run:
    """One request's generation state: prompt, KV cache, what came out."""

    def __init__(self, prompt: list[int]) -> None:
        self.prompt = prompt
        self.past: Any = None
        self.tokens: list[int] = []
        self.logprobs: list[dict[int, Logprob]] = []
        self.context_logits: Any = None
        self.done = False
        self.finish_reason: str | None = None
        self.text = ""


class PyTorchWorker(Worker):
    """Generation, streamed generation and reward tasks on a Hugging Face
    transformers model in this process (TensorRT-LLM's ``PyTorchWorker``: the
    worker of its CPU contrib).  Requests run one token step at a time, each
    step in a worker thread (the event loop never waits on the model); steps of
    concurrent requests take turns on the one model.

    For an engine with continuous batching, a paged KV cache and aborts, use
    ``EngineWorker(HFEngine(model_dir))`` instead; this worker is for TensorRT-LLM
    programs written against it, and for models ``HFEngine`` does not take
    (sequence-classification reward models).

    Handlers return ``WORKER_EXECEPTION`` (TensorRT-LLM's status) for a task with
    neither ``input_str`` nor ``input_tokens``; through a runtime that status fails
    the task with :class:`TaskFailedError`.  Cancelling a handler stops its
    request between two token steps.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: Any = None,
        *,
        max_tokens: int = 256,
        temperature: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._generator = torch.Generator(device="cpu")
        if seed is not None:
            self._generator.manual_seed(seed)
        self._lock = threading.Lock()
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"

    @classmethod
    def from_pretrained(
        cls, model_path: str, device: str | None = None, torch_dtype: Any = None, **kwargs: Any
    ) -> PyTorchWorker:
        """A worker over a causal LM folder (``AutoModelForCausalLM``); ``kwargs``
        go to ``from_pretrained`` (``gguf_file=`` for a GGUF model).  Loads
        synchronously (call it before the event loop, as TensorRT-LLM's does)."""
        model, tokenizer = _load(model_path, device, torch_dtype, "causal", kwargs)
        return cls(model, tokenizer, device or "cpu")

    @classmethod
    def from_pretrained_reward_model(
        cls,
        model_path: str,
        device: str | None = None,
        torch_dtype: Any = None,
        num_labels: int = 2,
        **kwargs: Any,
    ) -> PyTorchWorker:
        """A worker over a sequence-classification model (a reward model):
        :meth:`reward_handler` scores with it."""
        kwargs["num_labels"] = num_labels
        model, tokenizer = _load(model_path, device, torch_dtype, "reward", kwargs)
        return cls(model, tokenizer, device or "cpu")

    # -- generation ---------------------------------------------------------------
    def _prompt(self, task: GenerationTask | RewardTask) -> list[int] | None:
        if task.input_tokens:
            return list(task.input_tokens)
        if task.input_str is not None:
            return list(self.tokenizer.encode(task.input_str))
        return None

    def _step(self, run: _Run, task: GenerationTask) -> None:
        """One token of ``run`` (in a worker thread)."""
        import torch

        with self._lock, torch.no_grad():
            if run.past is None:
                ids = torch.tensor([run.prompt], device=self.device)
                out = self.model(input_ids=ids, use_cache=True)
                if task.return_context_logits:
                    run.context_logits = out.logits[0].detach().to("cpu")
            else:
                ids = torch.tensor([[run.tokens[-1]]], device=self.device)
                out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: run.past})
            # (transformers >= 5.2x names the KV cache ``cache``; earlier ``past_key_values``)
            run.past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            logits = out.logits[0, -1].float().to("cpu")
            token = self._sample(logits, task)
            if task.num_logprobs is not None:
                logprobs = torch.log_softmax(logits, dim=-1)
                ranks = torch.argsort(logprobs, descending=True)
                entry = {token: Logprob(float(logprobs[token]), _rank(ranks, token))}
                for rank, alt in enumerate(ranks[: task.num_logprobs].tolist(), start=1):
                    entry.setdefault(int(alt), Logprob(float(logprobs[alt]), rank))
                run.logprobs.append(entry)
        run.tokens.append(token)
        self._check_end(run, task, token)

    def _sample(self, logits: Any, task: GenerationTask) -> int:
        import torch

        temperature = task.temperature if task.temperature is not None else self.temperature
        if not temperature:
            return int(torch.argmax(logits))
        scaled = logits / temperature
        if task.top_k:
            kth = torch.topk(scaled, task.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if task.top_p is not None and task.top_p < 1.0:
            ordered, index = torch.sort(probs, descending=True)
            keep = torch.cumsum(ordered, dim=-1) - ordered < task.top_p
            probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def _check_end(self, run: _Run, task: GenerationTask, token: int) -> None:
        limit = task.max_tokens if task.max_tokens is not None else self.max_tokens
        eos = self.tokenizer.eos_token_id
        text = self.tokenizer.decode(run.tokens, skip_special_tokens=True)
        for stop in task.stop:
            at = text.find(stop)
            if at >= 0:
                run.text, run.done, run.finish_reason = text[:at], True, "stop"
                return
        run.text = text
        if token == eos:
            run.done, run.finish_reason = True, "stop"
        elif len(run.tokens) >= limit:
            run.done, run.finish_reason = True, "length"

    def _fill(self, task: GenerationTask, run: _Run) -> None:
        task.output_str = run.text
        task.output_tokens = list(run.tokens)
        task.logprobs = list(run.logprobs) if task.num_logprobs is not None else None  # type: ignore[arg-type]
        task.context_logits = run.context_logits
        task.finish_reason = run.finish_reason
        task.prompt_tokens_num = len(run.prompt)
        task.completion_tokens_num = len(run.tokens)

    async def generation_handler(self, task: GenerationTask) -> TaskStatus:
        """Generate ``task`` to its end (``max_tokens``, end of sequence or a
        stop string, which the output excludes)."""
        prompt = self._prompt(task)
        if prompt is None:
            return TaskStatus.WORKER_EXECEPTION
        run = _Run(prompt)
        while not run.done:
            await anyio.to_thread.run_sync(self._step, run, task)
        self._fill(task, run)
        return TaskStatus.SUCCESS

    async def stream_generation_handler(self, task: StreamGenerationTask) -> TaskStatus:
        """One step of a stream the caller drives (TensorRT-LLM's contract):
        each call generates ``streaming_step`` more tokens (``0``: one) into the
        task and sets ``end_flag`` when generation ended; a call with
        ``cancel_flag`` set ends it at once (``end_flag`` set)."""
        run = task.request_handle
        if task.cancel_flag:
            task.end_flag = True
            return TaskStatus.SUCCESS
        if not isinstance(run, _Run):
            prompt = self._prompt(task)
            if prompt is None:
                return TaskStatus.WORKER_EXECEPTION
            run = task.request_handle = _Run(prompt)
        for _ in range(max(task.streaming_step, 1)):
            if run.done:
                break
            await anyio.to_thread.run_sync(self._step, run, task)
        self._fill(task, run)
        task.end_flag = run.done
        return TaskStatus.SUCCESS

    # -- reward ---------------------------------------------------------------------
    def _score(self, ids: list[int]) -> float:
        import torch

        with self._lock, torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0]
            logits = logits.float().to("cpu")
        if logits.numel() == 1:
            return float(torch.sigmoid(logits[0]))
        return float(torch.softmax(logits, dim=-1)[-1])

    async def reward_handler(self, task: RewardTask) -> TaskStatus:
        """Score with a sequence-classification model: the probability of its
        last label (the sigmoid for one label), in ``custom_output_params["score"]``;
        with ``candidates``, each prompt + candidate scored into ``scores``.  A
        model that is not a classifier raises its own error."""
        prompt = self._prompt(task)
        if prompt is None:
            return TaskStatus.WORKER_EXECEPTION
        if task.candidates:
            scores = []
            for candidate in task.candidates:
                ids = prompt + list(self.tokenizer.encode(candidate))
                scores.append(await anyio.to_thread.run_sync(self._score, ids))
            task.scores = scores
            task.custom_output_params = {"score": max(scores)}
        else:
            score = await anyio.to_thread.run_sync(self._score, prompt)
            task.custom_output_params = {"score": score}
        return TaskStatus.SUCCESS

    def shutdown(self) -> None:
        """Move the model's weights off an accelerator (to the CPU)."""
        self.model.to("cpu")

    task_handlers: ClassVar[dict[type[Task], Handler]] = {
        GenerationTask: generation_handler,
        StreamGenerationTask: stream_generation_handler,
        RewardTask: reward_handler,
    }


def _rank(ranks: Any, token: int) -> int:
    """``token``'s place (1-based) in ``ranks``, the vocabulary by descending logprob."""
    return int((ranks == token).nonzero()[0][0]) + 1


def _load(
    path: str, device: str | None, torch_dtype: Any, kind: str, kwargs: dict[str, Any]
) -> tuple[Any, Any]:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    tokenizer_kw = {k: v for k, v in kwargs.items() if k == "gguf_file"}
    tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kw)
    cls = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    options = dict(kwargs)
    if torch_dtype is not None:
        options["dtype"] = torch_dtype
    model = cls.from_pretrained(path, **options)
    if kind == "reward" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.eos_token_id
    model.to(device or "cpu")
    model.eval()
    return model, tokenizer
