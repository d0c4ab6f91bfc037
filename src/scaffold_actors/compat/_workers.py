"""TensorRT-LLM's worker classes by name, mapped onto this project's engines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

from engine_bridge import EngineError, SamplingParams

from .._engine_worker import EngineWorker
from .._errors import InvalidTaskError
from .._hints import DropKVCacheTask
from .._mcp import MCPWorker
from .._tasks import Task, TaskStatus
from .._worker import Handler, Worker

__all__ = [
    "ApiaryMCPWorker",
    "OpenaiWorker",
    "TRTLLMWorker",
    "TRTOpenaiWorker",
    "set_trtllm_worker_engine",
    "worker_engine_factory",
]


class OpenaiWorker(EngineWorker):
    """``OpenaiWorker(async_client, model)``: generation and chat tasks through an
    OpenAI-compatible server (TensorRT-LLM compatible).

    ``async_client`` is an ``openai.AsyncOpenAI`` client; its ``base_url`` and
    ``api_key`` are used by an :class:`engine_bridge.OpenAIEngine` (httpx,
    streaming, aborts on cancel, retries), which the runtime starts and stops.
    Unlike TensorRT-LLM's, a failed call raises :class:`EngineError` instead of
    printing and returning ``WORKER_EXECEPTION``.

    ``kv_cache_hint_enabled=True`` lets :class:`DropKVCacheTask` s through to
    the server's ``/_control/kv_cache/truncate``; without it they are refused
    at submission (:class:`InvalidTaskError`), never silently dropped.
    """

    def __init__(
        self,
        async_client: Any,
        model: str,
        kv_cache_hint_enabled: bool = False,
        **engine_options: Any,
    ) -> None:
        from engine_bridge import OpenAIEngine

        base_url = str(getattr(async_client, "base_url", "") or "")
        if not base_url:
            raise TypeError(
                f"async_client must be an openai.AsyncOpenAI client, got {async_client!r}"
            )
        api_key = getattr(async_client, "api_key", None) or None
        self.async_client = async_client
        self.model = model
        self.kv_cache_hint_enabled = kv_cache_hint_enabled
        if kv_cache_hint_enabled and not hasattr(async_client, "create_kv_cache_hint"):
            # as TensorRT-LLM does: the client gets the call that posts the hint
            async_client.create_kv_cache_hint = _kv_cache_hint_poster(base_url, api_key)
        super().__init__(OpenAIEngine(base_url, model, api_key=api_key, **engine_options))

    async def drop_kv_cache_handler(self, task: DropKVCacheTask) -> TaskStatus:
        """Send the hint through the client's ``create_kv_cache_hint(task,
        params)`` (TensorRT-LLM's hook, attached by this worker unless the
        client has its own).  A response that is not a success raises
        :class:`EngineError` naming the status; ``freed_blocks`` is the
        server's count when it gives one."""
        chat = task.chat_task
        messages = [] if chat is None else [_message_dict(m) for m in chat.messages]
        params: dict[str, Any] = {"model": self.model, "messages": messages}
        response = await self.async_client.create_kv_cache_hint(task, params)
        status = getattr(response, "status_code", 200)
        if not 200 <= int(status) < 300:
            raise EngineError(f"KV-cache hint refused by the server: HTTP {status}")
        task.freed_blocks = _freed_blocks(response)
        return TaskStatus.SUCCESS

    task_handlers: ClassVar[dict[type[Task], Handler]] = {
        DropKVCacheTask: drop_kv_cache_handler,
    }

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if isinstance(task, DropKVCacheTask) and not self.kv_cache_hint_enabled:
            raise InvalidTaskError(
                "DropKVCacheTask.worker_tag",
                "this OpenaiWorker sends no KV-cache hints: make it with "
                "kv_cache_hint_enabled=True",
            )


def _message_dict(message: Any) -> Any:
    return message.to_dict() if hasattr(message, "to_dict") else dict(message)


def _control_root(base_url: str) -> str:
    """The server's root: ``base_url`` without a trailing ``/`` or ``/v1``."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root


def _kv_cache_hint_poster(base_url: str, api_key: str | None) -> Any:
    """``create_kv_cache_hint(task, params)``: POST the drop hint of ``task`` (a
    :class:`DropKVCacheTask`) to ``<root>/_control/kv_cache/truncate``
    (trtllm-serve's endpoint; ours serves it too) and return the response.
    ``params["model"]`` names the model and ``params["extra_body"]`` is merged
    into the body, as the OpenAI client does with its requests."""
    url = _control_root(base_url) + "/_control/kv_cache/truncate"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}

    async def create_kv_cache_hint(task: DropKVCacheTask, params: dict[str, Any]) -> Any:
        import httpx

        chat = task.chat_task
        body: dict[str, Any] = {
            "action": "truncate",
            "messages": [] if chat is None else [_message_dict(m) for m in chat.messages],
            "messages_to_retain": [_message_dict(m) for m in task.messages_to_retain],
            "model": params.get("model"),
            **(params.get("extra_body") or {}),
        }
        async with httpx.AsyncClient() as client:
            return await client.post(url, json=body, headers=headers)

    return create_kv_cache_hint


def _freed_blocks(response: Any) -> int | None:
    try:
        body = response.json()
    except Exception:  # no JSON body: the server took the hint without a count
        return None
    freed = body.get("freed_blocks") if isinstance(body, dict) else None
    return freed if isinstance(freed, int) else None


class TRTOpenaiWorker(OpenaiWorker):
    """:class:`OpenaiWorker` for ``trtllm-serve`` (``top_k`` is passed as the
    server's extension, as every request of :class:`OpenAIEngine` already does)."""


class TRTLLMWorker(EngineWorker):
    """``TRTLLMWorker(llm, tokenizer)``: generation, streaming and chat tasks on
    a ``tensorrt_llm.LLM`` (TensorRT-LLM compatible), through
    :class:`engine_bridge.TRTLLMEngine` (its own bridge thread; aborts confirmed
    by the executor's final response; logprobs never invented).

    ``llm`` stays the caller's (``shutdown()`` of this worker does not shut it
    down); the LLM's own tokenizer renders prompts, so ``tokenizer`` is kept only
    as an attribute.  :meth:`init_with_new_llm` makes a worker that owns its LLM.
    """

    def __init__(self, llm: Any, tokenizer: Any = None, **engine_options: Any) -> None:
        from engine_bridge import TRTLLMEngine

        self.llm = llm
        self.tokenizer = tokenizer
        self.own_llm = False
        super().__init__(TRTLLMEngine(llm=llm, **engine_options))

    @classmethod
    def init_with_new_llm(
        cls,
        model_dir: str,
        backend: str | None = "pytorch",
        max_batch_size: int = 32,
        max_num_tokens: int = 4096,
        kv_cache_free_gpu_memory_fraction: float = 0.9,
        disable_overlap_scheduler: bool = False,
        scheduler_config: Any = None,
        **sampling: Any,
    ) -> TRTLLMWorker:
        """A worker whose engine makes (and shuts down) its own ``LLM``.

        ``sampling`` (TensorRT-LLM's earlier form: ``temperature``, ``top_p``,
        ``topk`` / ``top_k``, ``stop``) are the worker's sampling defaults for
        what a task leaves unset.  Raises :class:`ImportError` at once when the
        real ``tensorrt_llm`` is not installed (the compat alias does not
        count), naming what to use instead, unless the worker engine was
        substituted (``scaffold port-run --worker-engine``,
        :func:`set_trtllm_worker_engine`): then the worker runs on that engine.
        Raises :class:`TypeError` for an unknown keyword."""
        from engine_bridge import TRTLLMEngine

        from ._alias import real_trtllm_installed

        defaults = _sampling_defaults(sampling)
        substitute = _SUBSTITUTE[0]
        if substitute is not None:
            engine: Any = substitute(model_dir)
            if isinstance(engine, Worker):  # a whole worker (--worker-engine pytorch)
                return engine  # type: ignore[return-value]
        elif not real_trtllm_installed():
            raise ImportError(
                "TRTLLMWorker.init_with_new_llm needs TensorRT-LLM (pip install "
                "'scaffold-actors[trtllm]' on an NVIDIA GPU host); without it, use "
                "EngineWorker(HFEngine(model_dir)) (transformers) or "
                "OpenaiWorker(openai.AsyncOpenAI(base_url=...), model) for a served model"
            )
        else:
            llm_kwargs: dict[str, Any] = {
                "backend": backend,
                "max_batch_size": max_batch_size,
                "max_num_tokens": max_num_tokens,
                "disable_overlap_scheduler": disable_overlap_scheduler,
            }
            if scheduler_config is not None:
                llm_kwargs["scheduler_config"] = scheduler_config
            engine = TRTLLMEngine(
                model_dir,
                free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
                llm_kwargs=llm_kwargs,
            )
        worker = cls.__new__(cls)
        EngineWorker.__init__(worker, engine, default_params=defaults)
        worker.llm, worker.own_llm = None, True
        worker.tokenizer = getattr(engine, "tokenizer", None)
        return worker


_SAMPLING_NAMES = {"temperature": "temperature", "top_p": "top_p", "topk": "top_k",
                   "top_k": "top_k", "stop": "stop", "max_tokens": "max_tokens"}


def _sampling_defaults(given: dict[str, Any]) -> SamplingParams | None:
    unknown = sorted(set(given) - set(_SAMPLING_NAMES))
    if unknown:
        raise TypeError(f"init_with_new_llm() got an unexpected keyword argument {unknown[0]!r}")
    values = {_SAMPLING_NAMES[k]: v for k, v in given.items() if v is not None}
    return SamplingParams(**values) if values else None


#: the engine factory that TRTLLMWorker.init_with_new_llm uses instead of
#: TensorRT-LLM's (one slot: set by set_trtllm_worker_engine)
_SUBSTITUTE: list[Callable[[str], Any] | None] = [None]


def set_trtllm_worker_engine(factory: Callable[[str], Any] | None) -> None:
    """Make :meth:`TRTLLMWorker.init_with_new_llm` build its worker on
    ``factory(model_dir)`` (an :class:`~engine_bridge.Engine`) instead of
    TensorRT-LLM's ``LLM``; ``None`` restores the default.  This is how ``scaffold
    port-run --worker-engine hf|openai=URL`` runs a TensorRT-LLM program
    unchanged where TensorRT-LLM is not installed.  Does not block."""
    _SUBSTITUTE[0] = factory


def _reward_kind(model_dir: str) -> Literal["process", "outcome"] | None:
    """``"process"`` for a folder holding a token-classification model (a
    process reward model), ``"outcome"`` for a sequence-classification one,
    ``None`` for anything else (a causal LM, a name that is no folder)."""
    import json
    import os

    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            architectures = json.load(f).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None
    if any(str(a).endswith("ForTokenClassification") for a in architectures):
        return "process"
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "outcome"
    return None


def worker_engine_factory(spec: str) -> Callable[[str], Any]:
    """The engine factory a ``--worker-engine`` spec names: ``hf`` (transformers
    on the CPU: ``model_dir`` a model folder, or ``embedded`` for the embedded
    SmolLM2; a folder of a token- or sequence-classification model gives a
    :class:`RewardWorker` of kind ``process`` or ``outcome``, loaded at once),
    ``pytorch`` (a whole :class:`PyTorchWorker` instead of the
    ``TRTLLMWorker``: one token step at a time, no batching, but each token's
    top logprobs, which transformers' continuous batching does not give, as
    TensorRT-LLM's do) or ``openai=URL`` (an OpenAI-compatible server;
    ``model_dir`` is sent as the model name).  Raises :class:`ValueError` for
    anything else."""
    if spec == "hf":

        def hf(model_dir: str) -> Any:
            from engine_bridge import HFEngine

            kind = _reward_kind(model_dir)
            if kind is not None:  # a reward model: its worker, loaded now (as TensorRT-LLM's)
                from .._reward_worker import RewardWorker

                worker = RewardWorker(model_dir, kind=kind)
                worker.load()
                return worker
            return HFEngine(None if model_dir in ("", "embedded") else model_dir)

        return hf
    if spec.startswith("openai="):
        url = spec[len("openai=") :]
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--worker-engine openai=URL needs an http(s) URL, got {url!r}")

        def openai(model_dir: str) -> Any:
            from engine_bridge import OpenAIEngine

            return OpenAIEngine(url, model_dir)

        return openai
    if spec == "pytorch":

        def pytorch(model_dir: str) -> Any:
            from ._pytorch_worker import PyTorchWorker

            if model_dir in ("", "embedded"):  # its transformers folder (the conversion cache)
                from engine_bridge import HFEngine, conversion_cache_folder, embedded_model_path

                folder = conversion_cache_folder(embedded_model_path())
                if not (folder / "config.json").is_file():
                    HFEngine().load()  # converts the GGUF into that folder, once
                model_dir = str(folder)
            return PyTorchWorker.from_pretrained(model_dir)

        return pytorch
    raise ValueError(f"--worker-engine must be 'hf', 'pytorch' or 'openai=URL', got {spec!r}")


class ApiaryMCPWorker(MCPWorker):
    """``ApiaryMCPWorker(base_url)``: MCP tools from an Apiary sandbox server
    over SSE, one connection (so one sandbox) per execution scope
    (TensorRT-LLM compatible).

    Each request and each parallel branch gets its own session, opened on its
    first call at ``base_url?client_id=coder-<scope id>`` plus the query
    parameters given to :meth:`set_scope_params` for its request, and closed
    when the scope ends (:meth:`on_scope_end`).  At most ``max_connections``
    are open at once; a scope's first call waits for a free one.  Tools are not
    listed at start (that would open a sandbox): a call's arguments are
    checked for JSON and size only, and an unknown tool is the server's error
    (``is_error``).  Results in the sandbox's ``{"content", "stdout",
    "stderr"}`` envelope fill ``result_str``, ``result_stdout`` and
    ``result_stderr``.  Stricter than there: a sandbox that cannot be reached
    fails the call with :class:`MCPServerError` (it does not hang), and a
    connection lost mid-call fails that call and reconnects on the next.
    """

    lists_tools = False

    def __init__(self, base_url: str, max_connections: int = 200, **options: Any) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._scope_params: dict[str, dict[str, str | Sequence[str]]] = {}
        super().__init__(
            {"apiary": self.base_url}, per_scope=True, max_sessions=max_connections, **options
        )

    def __repr__(self) -> str:
        return f"ApiaryMCPWorker({self.base_url!r})"

    def set_scope_params(self, request_id: str, **params: str | Sequence[str]) -> None:
        """Extra query parameters for the connections of request ``request_id``
        (a result's ``id``, ``"req-N"``) and its branches; list values repeat
        the parameter.  Forgotten when the request's scope ends."""
        for name, value in params.items():
            if not isinstance(value, str) and not (
                isinstance(value, Sequence) and all(isinstance(v, str) for v in value)
            ):
                raise ValueError(f"{name} must be a string or a list of strings, got {value!r}")
        self._scope_params[str(request_id)] = dict(params)

    def url_for(self, scope_id: str) -> str:
        """The SSE URL of ``scope_id``'s connection."""
        query = {"client_id": f"coder-{scope_id}", **self._scope_params.get(_root(scope_id), {})}
        return f"{self.base_url}?{urlencode(query, doseq=True)}"

    def transport(self, server: str, scope_id: str | None) -> Any:
        from mcp.client.sse import sse_client

        return sse_client(self.url_for(scope_id or "default"))

    async def on_scope_end(self, scope_id: str) -> None:
        await super().on_scope_end(scope_id)
        if scope_id == _root(scope_id):
            self._scope_params.pop(scope_id, None)

    async def release_connection(self, scope_id: str) -> None:
        """Close ``scope_id``'s connection now (TensorRT-LLM's name)."""
        await MCPWorker.on_scope_end(self, scope_id)


def _root(scope_id: str) -> str:
    return scope_id.split(":", 1)[0]
