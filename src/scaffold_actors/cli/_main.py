"""The ``scaffold`` command line."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import attrs
import click

from engine_bridge import EngineError, InvalidRequestError, SamplingParams

from .. import EngineWorker, ScaffoldError, ScaffoldingLlm
from ..methods import sample_answer
from ._registry import METHODS, SHORT, build_method
from ._waiting import waiting as _waiting

ENGINES = ("hf", "openai", "trtllm", "simulated")
#: the hf engine's KV cache (tokens) and batch size (tokens per step) on a CPU
CPU_KV_CACHE_TOKENS = 8192
CPU_MAX_BATCH_TOKENS = 2048
# errors a user can fix: one line, exit 1, no traceback
USER_ERRORS = (
    InvalidRequestError,
    FileNotFoundError,
    EngineError,
    ValueError,
    ScaffoldError,
    OSError,
)


def _quiet_transformers() -> None:
    import os

    # transformers' GGUF conversion draws a plain tqdm bar; we say one line instead
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - the hf extra is not installed
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    import logging

    # the continuous-batching manager logs on a logger of its own
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.ERROR)


def _say_if_converting(model: str | None) -> None:
    """One line on stderr when the embedded model's GGUF is about to be
    converted (the first start only: later ones read the conversion cache)."""
    if model is not None:
        return
    from engine_bridge import conversion_cache_folder, embedded_model_path

    try:
        folder = conversion_cache_folder(embedded_model_path())
    except (OSError, ImportError):
        return  # the engine says what is missing
    if not (folder / "config.json").is_file():
        click.echo(
            f"converting the embedded model once (~30 s); later starts read {folder}", err=True
        )


@attrs.frozen
class EngineOptions:
    """The engine options of ``run``, ``serve`` and ``bench``, gathered by
    :func:`with_engine_options`."""

    engine: str = "hf"
    model: str | None = None
    base_url: str | None = None
    replicas: int = 1
    devices: str | None = None
    replica_processes: bool = False
    reward_model: str | None = None
    ray: str | None = None  # a Ray cluster's address ("auto": the local `ray start`)
    replica_resources: str | None = None  # JSON: what each Ray actor needs
    simulated_step_seconds: float | None = None  # a slow simulated engine (hidden option)
    seed: int | None = None
    raw_completions: bool = False


#: what --replica-resources may set for each Ray actor
RAY_RESOURCE_KEYS = ("num_cpus", "num_gpus", "resources", "label_selector", "memory")


def ray_actor_options(spec: str | None) -> dict[str, Any]:
    """``--replica-resources`` as the Ray actor options it names (JSON object,
    e.g. ``{"num_gpus": 1}`` or ``{"resources": {"node-1": 1}}``); raises
    :class:`ValueError` naming what is wrong."""
    if not spec:
        return {}
    try:
        value = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--replica-resources: not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError("--replica-resources: a JSON object, e.g. '{\"num_gpus\": 1}'")
    unknown = sorted(set(value) - set(RAY_RESOURCE_KEYS))
    if unknown:
        raise ValueError(
            f"--replica-resources: unknown key {unknown[0]!r} (one of {', '.join(RAY_RESOURCE_KEYS)})"
        )
    return value


def build_ray_engines(options: EngineOptions, count: int, devices: list[str]) -> list[Any]:
    """``count`` replicas as Ray actors, one bundle of a placement group each
    (spread over the cluster's nodes where it has them): the engine the options
    name, built in each actor's process."""
    from engine_bridge import RayEngine, RayPlacement

    if options.engine == "openai":
        raise ValueError("--ray hosts a local engine (hf, trtllm, simulated), not --engine openai")
    if options.replica_processes:
        raise ValueError("--ray and --replica-processes both place replicas: choose one")
    local = attrs.evolve(options, ray=None, replica_resources=None, replicas=1)
    actor = ray_actor_options(options.replica_resources)
    # join the cluster here, in the command's own (main) thread: Ray's driver made
    # from another thread lost actors that took long to start (seen with two
    # transformers engines)
    import ray

    if not ray.is_initialized():
        ray.init(address=options.ray, log_to_driver=False)
    bundle: dict[str, float] = {"CPU": float(actor.get("num_cpus", 1))}
    if actor.get("num_gpus"):
        bundle["GPU"] = float(actor["num_gpus"])
    bundle.update(actor.get("resources") or {})
    placement = RayPlacement([dict(bundle) for _ in range(count)], "SPREAD")
    rest: dict[str, Any] = {k: actor[k] for k in ("memory", "label_selector") if k in actor}
    return [
        RayEngine(
            functools.partial(
                build_engine, local, None, devices[i % len(devices)] if devices else None
            ),
            address=options.ray,
            actor_options=rest,
            name=f"{options.engine}-{i}",
            placement=placement,
            bundle_index=i,
        )
        for i in range(count)
    ]


def engine_places(engine: Any) -> list[dict[str, Any]]:
    """Where each engine of ``engine`` (one, or a pool's) ran: for a Ray
    actor, its node; for another engine, its class."""
    members = getattr(engine, "engines", None) or (engine,)
    places: list[dict[str, Any]] = []
    for member in members:
        node = getattr(member, "node", None)
        if isinstance(node, dict) and node:
            places.append(
                {
                    "engine": repr(member),
                    "node_ip": node.get("node_ip"),
                    "node_id": node.get("node_id"),
                }
            )
        else:
            places.append({"engine": type(member).__name__})
    return places


def build_engine(options: EngineOptions, url: str | None = None, device: str | None = None) -> Any:
    """One engine as the options name it (raises ValueError / FileNotFoundError)."""
    engine, model = options.engine, options.model
    seed = options.seed if options.seed is not None else 0
    if options.raw_completions and engine != "openai":
        raise ValueError("--raw-completions is for --engine openai")
    if options.seed is not None and engine not in ("hf", "simulated"):
        raise ValueError("--seed is for --engine hf or simulated (a server seeds itself)")
    if options.replica_processes:
        from engine_bridge import ProcessEngine

        if engine not in ("hf", "simulated"):
            raise ValueError("--replica-processes is for --engine hf or simulated")
        # a CPU child: the KV cache sized for a CPU (below); a GPU one: ProcessEngine's
        sizing: dict[str, Any] = (
            {"kv_cache_tokens": CPU_KV_CACHE_TOKENS} if engine == "hf" and _on_cpu(device) else {}
        )
        return ProcessEngine(
            engine, model=model, device=device or "cpu", dtype=_dtype(device),
            extra_args=["--seed", str(seed)], **sizing,
        )  # fmt: skip
    if engine == "simulated":
        from engine_bridge import CostModel, SimulatedEngine

        if options.simulated_step_seconds is not None:  # a slow engine, for tests of limits
            step = options.simulated_step_seconds
            return SimulatedEngine(cost=CostModel(0.0, step, 0.0), seed=seed)
        return SimulatedEngine(seed=seed)
    if engine == "openai":
        from engine_bridge import OpenAIEngine

        url = url or options.base_url
        if not url:
            raise ValueError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        # a question is a chat turn, as the local engines render it (their chat
        # template), unless raw completions are asked for
        return OpenAIEngine(
            url,
            model or "default",
            max_retries=2,
            connect_timeout=5.0,
            chat=not options.raw_completions,
        )
    if engine == "trtllm":
        from engine_bridge import TRTLLMEngine

        if not model:
            raise ValueError("--engine trtllm needs --model (a checkpoint or engine folder)")
        return TRTLLMEngine(model)
    _quiet_transformers()
    _say_if_converting(model)
    from engine_bridge import HFEngine

    # on a CPU: a KV cache and batch buffers sized for a CPU's work (3.76 GB -> 1.46 GB
    # resident for the embedded model, no slower: docs/engines.md); a GPU: the engine's own
    cpu: dict[str, Any] = (
        {
            "kv_cache_tokens": CPU_KV_CACHE_TOKENS,
            "batching": {"max_batch_tokens": CPU_MAX_BATCH_TOKENS},
        }
        if _on_cpu(device)
        else {}
    )
    return HFEngine(model, device=device or "cpu", dtype=_dtype(device), seed=seed, **cpu)


def _on_cpu(device: str | None) -> bool:
    return not (device or "cpu").startswith("cuda")


def _dtype(device: str | None) -> str:
    return "bfloat16" if device and device.startswith("cuda") else "float32"


#: what each engine imports, and the extra that installs it
_NEEDS = {
    "hf": (("torch", "transformers"), "hf"),
    "openai": (("httpx",), "http"),
    "trtllm": (("tensorrt_llm",), "trtllm"),
}


def check_engine_options(options: EngineOptions, devices: list[str]) -> None:
    """What can be checked before an engine starts (the model loads for tens of
    seconds): the engine's optional dependencies, a child server's, and the
    devices.  Raises :class:`ValueError` with the fix in the message."""
    import importlib.util

    modules, extra = _NEEDS.get(options.engine, ((), ""))
    if options.ray is not None:
        modules, extra = (*modules, "ray"), f"{extra},ray"
    if options.replica_processes:
        modules, extra = (*modules, "starlette", "uvicorn"), f"{extra},server"
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"--engine {options.engine} needs {', '.join(missing)}: "
            f"pip install 'scaffold-actors[{extra.strip(',')}]'"
        )
    if not devices:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for d in devices:
        try:
            device = torch.device(d)
        except (RuntimeError, ValueError):
            raise ValueError(f"--devices {d}: not a torch device (cuda:0, cuda:1, cpu)") from None
        if device.type == "cuda" and (device.index or 0) >= have:
            raise ValueError(
                f"--devices {d}: this torch ({torch.__version__}) sees {have} CUDA device(s)"
                + ("; it is a CPU build" if not torch.backends.cuda.is_built() else "")
            )


def build_pool(options: EngineOptions) -> Any:
    """One engine, or an :class:`EnginePool` of replicas: one per device in
    ``devices`` (hf), one per URL in a comma-separated ``base_url`` (openai), or
    ``replicas`` copies (hf devices are cycled); each in a child process of its own
    with ``replica_processes``."""
    urls = [u.strip() for u in (options.base_url or "").split(",") if u.strip()]
    devices = [d.strip() for d in (options.devices or "").split(",") if d.strip()]
    if devices and options.engine != "hf":
        raise ValueError("--devices is for --engine hf")
    check_engine_options(options, devices)
    count = max(options.replicas, len(devices), len(urls) if options.engine == "openai" else 1)
    if options.ray is not None:
        ray_members = build_ray_engines(options, count, devices)
        if count == 1:
            return ray_members[0]
        from engine_bridge import EnginePool

        return EnginePool(ray_members)
    if options.replica_resources is not None:
        raise ValueError("--replica-resources is for --ray")
    members = [
        build_engine(
            options,
            urls[i % len(urls)] if urls else None,
            devices[i % len(devices)] if devices else None,
        )
        for i in range(count)
    ]
    if count == 1:
        return members[0]
    from engine_bridge import EnginePool

    return EnginePool(members)


def build_workers(options: EngineOptions, method: str, max_tokens: int | None) -> dict[str, Any]:
    if max_tokens is None:
        max_tokens = METHODS[method].default_max_tokens
    workers: dict[str, Any] = {
        "generation": EngineWorker(
            build_pool(options), default_params=SamplingParams(max_tokens=max_tokens)
        )
    }
    if METHODS[method].uses_reward:
        workers["reward"] = _reward_worker(options, method, workers["generation"])
    return workers


def _reward_worker(options: EngineOptions, method: str, generation: Any) -> Any:
    """The reward model named by --reward-model, else the generation model
    judging its own candidates (:class:`SelfVerifier`)."""
    if not options.reward_model:
        from .. import SelfVerifier

        return SelfVerifier(generation.engine)
    from .. import RewardWorker

    return RewardWorker(
        options.reward_model, kind="outcome" if method == "best-of-n" else "process"
    )


def build_controllers(
    names: list[str],
    method: str,
    given: dict[str, str],
    samples: int | None,
    max_tokens: int | None,
    temperature: float | None,
    instruction: str | None,
) -> dict[str, Any]:
    """A controller per method name.  The ``-p`` parameters ``given`` go to
    ``method`` (the one the command line chose) when it is among ``names`` (a run,
    a server); when several methods are compared and ``method`` is not one of
    them, each gets those it takes (``-p max_steps=3`` reaches every tree
    search), and a parameter none of them takes is an error."""
    if len(names) > 1 and method not in names:
        unknown = sorted(k for k in given if not any(k in METHODS[m].params for m in names))
        if unknown:
            raise ValueError(f"no compared method takes parameter(s) {', '.join(unknown)}")
        shares = {m: {k: v for k, v in given.items() if k in METHODS[m].params} for m in names}
    else:
        shares = {m: given if m == method else {} for m in names}
    return {
        m: build_method(
            m,
            samples=samples,
            max_tokens=max_tokens,
            temperature=temperature,
            params=shares[m],
            instruction=instruction,
        )
        for m in names
    }


def parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        params[key.strip().replace("-", "_")] = value.strip()
    return params


common_options = [
    click.option(
        "--method", default="majority-vote", show_default=True, help="see `scaffold methods`"
    ),
    click.option(
        "--samples",
        type=click.IntRange(min=1),
        default=None,
        help="samples / width of the method (default: 16 for majority-vote, "
        "adaptive-consistency and deepconf, 4 for the others)",
    ),
    click.option(
        "--max-tokens",
        type=click.IntRange(min=1),
        default=None,
        help="tokens per sample at most (default: the method's, see `scaffold methods`)",
    ),
    click.option(
        "--temperature",
        type=click.FloatRange(min=0.0),
        default=None,
        help="sampling temperature (default: 0.3 for majority-vote and adaptive-consistency, "
        "0.7 for the others)",
    ),
    click.option(
        "--instruction",
        default=None,
        help="appended to every question (default: the votes ask for the boxed answer "
        "alone, the others to think step by step first; '' for none)",
    ),
    click.option(
        "-p",
        "--param",
        "params",
        multiple=True,
        metavar="KEY=VALUE",
        help="a method parameter (repeatable)",
    ),
]

engine_options = [
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="hf",
        show_default=True,
        help="hf: transformers on the CPU/GPU; openai: an HTTP server; trtllm: TensorRT-LLM; simulated: no model",
    ),
    click.option(
        "--model",
        type=str,
        default=None,
        help="model folder (default: embedded SmolLM2-135M) or the server's model name",
    ),
    click.option(
        "--base-url",
        default=None,
        help="OpenAI-compatible server for --engine openai; several, comma-separated, are pooled",
    ),
    click.option(
        "--replicas",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="engine replicas behind one pool (hf: spread over --devices)",
    ),
    click.option(
        "--devices",
        default=None,
        help="comma-separated torch devices for --engine hf, one replica each (cuda:0,cuda:1)",
    ),
    click.option(
        "--replica-processes",
        is_flag=True,
        help="run each hf/simulated replica in a child process of its own (one per GPU scales best)",
    ),
    click.option(
        "--reward-model",
        default=None,
        help="reward model folder for best-of-n (outcome) and the tree searches (process); "
        "default: the generation model judges its own candidates (self-verification)",
    ),
    click.option(
        "--raw-completions",
        is_flag=True,
        help="--engine openai: send questions to /v1/completions as raw text, not as a chat turn",
    ),
    click.option(
        "--ray",
        is_flag=False,
        flag_value="auto",
        default=None,
        metavar="[ADDRESS|auto]",
        help="host each engine replica in a Ray actor on a Ray cluster (auto: the one "
        "`ray start` made on this machine); with --replicas N, spread over its nodes",
    ),
    click.option(
        "--replica-resources",
        default=None,
        metavar="JSON",
        help="--ray: what each replica's actor needs, e.g. '{\"num_gpus\": 1}' or "
        '\'{"resources": {"node-1": 1}}\'',
    ),
    click.option("--simulated-step-seconds", type=float, default=None, hidden=True),
    click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=None,
        help="the engine's sampling seed (hf, simulated; default 0): the same seed draws the same samples",
    ),
]


def with_engine_options(fn: Any) -> Any:
    """Add the engine options; the command receives them as one ``options:
    EngineOptions`` argument."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        fields = {f.name for f in attrs.fields(EngineOptions)}
        options = EngineOptions(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
        return fn(*args, options=options, **kwargs)

    for option in reversed(engine_options):
        command = option(command)
    return command


def with_common(fn: Any) -> Any:
    fn = with_engine_options(fn)
    for option in reversed(common_options):
        fn = option(fn)
    return fn


@click.group()
@click.version_option(package_name="scaffold-actors")
def main() -> None:
    """Inference-time compute methods over LLMs."""
    _plain_warnings()


def _plain_warnings() -> None:
    """Warnings for people: one line each, without our source line, and an
    engine's unconfirmed aborts said once (a starved machine is not the user's
    fault; the count is in the engine's ``abort_timeouts``)."""
    import warnings

    from engine_bridge import AbortNotAcknowledgedWarning

    said: set[type[Warning]] = set()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, AbortNotAcknowledgedWarning):
            if category in said:
                return
            said.add(category)
            click.echo(
                f"warning: {message} (the machine may be too busy for the engine; "
                "later ones are not shown)",
                err=True,
            )
            return
        click.echo(f"warning: {message}", err=True)

    warnings.showwarning = show


@main.command(
    "port-run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    epilog="Example: scaffold port-run examples/scaffolding/run_majority_vote_aime24.py --help",
)
@click.option(
    "--worker-engine",
    default=None,
    metavar="hf|pytorch|openai=URL",
    help=(
        "what TRTLLMWorker.init_with_new_llm(model_dir) runs on where TensorRT-LLM is not "
        "installed: 'hf' (transformers on the CPU; model_dir 'embedded' is the embedded "
        "SmolLM2), 'pytorch' (a PyTorchWorker: no batching, but top logprobs, which "
        "DeepConf needs) or 'openai=URL' (an OpenAI-compatible server, model_dir its model name)"
    ),
)
@click.argument("script", type=click.Path(dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def port_run(worker_engine: str | None, script: str, args: tuple[str, ...]) -> None:
    """Run a TensorRT-LLM Scaffolding SCRIPT unchanged on scaffold-actors.

    ``import tensorrt_llm.scaffolding`` (and its submodules) resolve to
    scaffold_actors.compat, unless the real TensorRT-LLM is installed (then it
    runs on that, as it would anyway).  ARGS go to the script as its argv.
    """
    import runpy

    from scaffold_actors.compat import (
        install_trtllm_alias,
        set_trtllm_worker_engine,
        worker_engine_factory,
    )

    path = os.path.abspath(script)
    if not os.path.isfile(path):
        raise click.BadParameter(f"{script}: no such file", param_hint="SCRIPT")
    if not install_trtllm_alias():
        click.echo("port-run: the real tensorrt_llm is installed; running on it", err=True)
    elif worker_engine is not None:
        try:
            set_trtllm_worker_engine(worker_engine_factory(worker_engine))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--worker-engine") from None
    sys.argv = [path, *args]
    sys.path.insert(0, os.path.dirname(path))
    runpy.run_path(path, run_name="__main__")


@main.command(
    epilog='Example: transformers serve "$(scaffold cache --path)" --continuous-batching --device cpu'
)
@click.option("--path", "path_only", is_flag=True, help="print only the embedded model's folder")
@click.option("--convert", is_flag=True, help="convert the embedded model now if it is not yet")
def cache(path_only: bool, convert: bool) -> None:
    """Where the embedded model's transformers folder (the GGUF conversion cache)
    is, and a `transformers serve` command over it."""
    from engine_bridge import conversion_cache_folder, conversion_cache_root, embedded_model_path

    try:
        folder = conversion_cache_folder(embedded_model_path())
    except (OSError, ImportError) as e:
        raise click.ClickException(str(e)) from None
    ready = (folder / "config.json").is_file()
    if not ready and convert:
        from engine_bridge import HFEngine

        _say_if_converting(None)
        HFEngine().load()
        ready = (folder / "config.json").is_file()
    if path_only:
        click.echo(str(folder))
        return
    click.echo(f"cache folder:   {conversion_cache_root()}  (set SCAFFOLD_ACTORS_CACHE to move it)")
    state = "converted" if ready else "not converted yet: scaffold cache --convert"
    click.echo(f"embedded model: {folder}  ({state})")
    click.echo(f"serve it:       transformers serve {folder} --continuous-batching --device cpu")


@main.command(epilog="Example: scaffold methods --json")
@click.option("--json", "as_json", is_flag=True, help="machine-readable list")
def methods(as_json: bool) -> None:
    """List the methods and their parameters."""
    table: dict[str, dict[str, Any]] = {
        name: {
            "summary": spec.summary,
            "uses_reward": spec.uses_reward,
            "default_samples": spec.default_samples if spec.uses_samples else 1,
            "uses_samples": spec.uses_samples,
            "default_temperature": spec.default_temperature,
            "default_max_tokens": spec.default_max_tokens,
            "default_instruction": spec.default_instruction,
            "params": {
                k: {"type": t.__name__, "default": d, "help": h}
                for k, (t, d, h) in spec.params.items()
            },
        }
        for name, spec in METHODS.items()
    }
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    for name, info in table.items():
        click.echo(f"{name:22} {info['summary']}")
        click.echo(
            f"{'':22}   defaults: "
            + (f"--samples {info['default_samples']} " if info["uses_samples"] else "one sample, ")
            + f"--max-tokens {info['default_max_tokens']} "
            + f"--temperature {info['default_temperature']}"
            + ("  (asks for the answer alone)" if info["default_instruction"] == SHORT else "")
        )
        for key, p in info["params"].items():
            click.echo(f"{'':22}   -p {key}={p['default']}  ({p['type']}) {p['help']}")
    click.echo(
        "\ncommon options: --samples N --max-tokens N --temperature T (see `scaffold run --help`)"
    )


def _count(value: Any) -> str:
    """A vote count or weight for people: ``2``, ``1.73``."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3g}"
    return str(int(value)) if isinstance(value, float) else str(value)


def vote_summary(details: dict[str, Any]) -> str:
    """What a vote decided, in words: the majority and how strong it is, a tie
    (no majority: the answer seen first is reported), or that no sample gave an
    answer."""
    votes = details.get("votes")
    if votes is None:
        return ""
    finished = details.get("samples_finished", details.get("samples_requested"))
    if not votes:
        of = f" of {finished} samples" if finished else ""
        why = details.get("unanswered") or {}
        reasons = [
            f"{why[k]} {label}"
            for k, label in (
                ("empty", "empty"),
                ("cut_by_length", "cut by --max-tokens before an answer"),
                ("no_answer", "with no answer to extract"),
            )
            if why.get(k)
        ]
        because = f" ({', '.join(reasons)})" if reasons else ""
        return f"no answer: none{of} gave an answer that could be extracted{because}"
    ranked = sorted(votes.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{a}: {_count(v)}" for a, v in ranked)
    top = ranked[0][1]
    leaders = [a for a, v in ranked if v == top]
    total = sum(v for _, v in ranked)
    if len(leaders) > 1:
        return f"votes: {shown}   tie between {', '.join(leaders)}: no majority (the first seen is reported)"
    strength = f"{_count(top)} of {_count(total)}" + (
        f" answers, {finished} samples" if finished and finished != total else ""
    )
    kind = "majority" if top * 2 > total else "plurality"
    cut = (details.get("unanswered") or {}).get("cut_by_length")
    cut_note = f"   ({cut} cut by --max-tokens before an answer: no vote)" if cut else ""
    return f"votes: {shown}   {kind}: {strength}{cut_note}"


def _live_line(partial: Any, usage: Any, started: float) -> str:
    d = partial.details or {}
    parts = []
    if "samples_finished" in d:
        parts.append(f"samples {d['samples_finished']}/{d.get('samples_requested', '?')}")
    if d.get("votes"):
        parts.append(
            "votes "
            + ", ".join(f"{a}: {v}" for a, v in sorted(d["votes"].items(), key=lambda kv: -kv[1]))
        )
    if d.get("scores"):
        parts.append(f"best score {max(d['scores']):.3f}")
    parts.append(f"{usage.completion_tokens} tokens")
    parts.append(f"{time.perf_counter() - started:.1f} s")
    return " · ".join(parts)


@main.command(
    epilog="Examples:\n\n\b\n"
    '  scaffold run "What is 12 + 7? Give the final answer as \\boxed{}." --samples 8\n'
    '  scaffold run "What is 2 + 2?" --method dynasor --engine simulated --json'
)
@click.argument("question")
@with_common
@click.option("--json", "as_json", is_flag=True, help="print a machine-readable result")
def run(
    question: str,
    method: str,
    samples: int | None,
    max_tokens: int | None,
    temperature: float | None,
    instruction: str | None,
    params: tuple[str, ...],
    options: EngineOptions,
    as_json: bool,
) -> None:
    """Answer QUESTION with an inference-time compute method."""
    if not question.strip():  # before any engine starts
        raise click.UsageError("QUESTION must not be empty")
    try:
        controller = build_method(
            method,
            samples=samples,
            max_tokens=max_tokens,
            temperature=temperature,
            params=parse_params(params),
            instruction=instruction,
        )
        start = time.perf_counter()
        workers = build_workers(options, method, max_tokens)
        with ExitStack() as stack:
            with _waiting(f"starting the {options.engine} engine", quiet=as_json):
                llm = stack.enter_context(ScaffoldingLlm(controller, workers))
            loaded = time.perf_counter()
            pending = llm.generate_async(question)
            if as_json or not sys.stderr.isatty():
                result = pending.result()
            else:
                from rich.console import Console
                from rich.live import Live

                with Live(
                    console=Console(stderr=True), transient=True, refresh_per_second=8
                ) as live:
                    for partial in pending:
                        live.update(_live_line(partial, pending.usage, loaded))
                result = pending.result()
        done = time.perf_counter()
    except USER_ERRORS as exc:
        raise click.ClickException(_one_line(exc)) from None
    out = result.output
    assert out is not None
    cut = out.finish_reason == "length"
    if "answer" in out.details:
        answer = out.details["answer"]
    else:  # one sample: cut by --max-tokens, only an answer it boxed counts
        answer = sample_answer(out.output_str, out.finish_reason)
    payload: dict[str, Any] = {
        "question": question,
        "method": method,
        "answer": answer,
        "cut_by_max_tokens": cut,
        "output": out.output_str,
        "details": dict(out.details),
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "tasks": result.usage.tasks,
        },
        "seconds": {"load": round(loaded - start, 2), "generate": round(done - loaded, 2)},
    }
    if options.ray is not None:
        payload["engines"] = engine_places(workers["generation"].engine)
    if as_json:
        click.echo(json.dumps(payload, default=str))
        return
    click.echo(out.output_str)
    if answer is not None:
        summary = [f"answer: {answer}"]
    elif cut:
        limit = max_tokens if max_tokens is not None else METHODS[method].default_max_tokens
        summary = [f"answer: none: the output was cut by --max-tokens {limit} before an answer"]
    else:
        summary = ["answer: none found in the output"]
    votes = vote_summary(dict(out.details))
    if votes:
        summary.append(votes)
    click.echo("\n" + "   ".join(summary))
    click.echo(
        f"tokens: {result.usage.completion_tokens} generated in {result.usage.tasks} task(s), "
        f"{payload['seconds']['generate']} s (engine start {payload['seconds']['load']} s)",
        err=True,
    )
    for place in payload.get("engines", ()):
        click.echo(f"engine {place['engine']} ran on node {place.get('node_id')}", err=True)


@main.command(
    epilog="Example: scaffold serve --port 8000 --samples 8, then any OpenAI client at "
    "http://127.0.0.1:8000/v1 with model='majority-vote' (GET /v1/models lists the methods)"
)
@with_common
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="requests at once; more get 429",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="seconds before a request is cancelled (504)",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="larger bodies get 413",
)
def serve(
    method: str,
    samples: int | None,
    max_tokens: int | None,
    temperature: float | None,
    instruction: str | None,
    params: tuple[str, ...],
    options: EngineOptions,
    host: str,
    port: int,
    max_in_flight: int,
    request_timeout: float,
    max_body_bytes: int,
) -> None:
    """Serve methods as models of an OpenAI-compatible API.

    Every method is a model; --method (with its -p parameters) is listed first.
    Methods that score candidates use --reward-model, else the generation model's
    own verdict (self-verification).
    """
    try:
        import uvicorn

        from ._serve import create_app
    except ImportError:
        raise click.ClickException(
            "scaffold serve needs the server extra: pip install 'scaffold-actors[server]'"
        ) from None
    try:
        given = parse_params(params)
        if method not in METHODS:
            build_method(method, samples=samples, max_tokens=max_tokens, temperature=temperature)
        names = [method] + [m for m in METHODS if m != method]
        controllers = build_controllers(
            names, method, given, samples, max_tokens, temperature, instruction
        )
        from ..methods import Sampler

        for name, c in controllers.items():  # one sample: streamed token by token
            if isinstance(c, Sampler):
                controllers[name] = attrs.evolve(c, stream=True, streaming_step=4)
        workers = build_workers(options, method, max_tokens)
        if "reward" not in workers:  # the other methods' (best-of-n's kind of model)
            workers["reward"] = _reward_worker(options, "best-of-n", workers["generation"])
        app = create_app(
            controllers,
            workers,
            max_in_flight=max_in_flight,
            request_timeout=request_timeout,
            max_body_bytes=max_body_bytes,
        )
    except USER_ERRORS as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(
        f"serving {', '.join(controllers)} on http://{host}:{port}/v1 ({options.engine} engine)",
        err=True,
    )
    import logging

    access = logging.getLogger("scaffold_actors.serve")  # one line per request, on stderr
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command(
    short_help="Run methods over a dataset: accuracy, tokens, latency.",
    epilog="Examples:\n\n\b\n"
    "  scaffold bench --dataset arithmetic --limit 8\n"
    "  scaffold bench --dataset arithmetic --compare cot,majority-vote --engine simulated",
)
@click.option("--dataset", required=True, help="a JSONL file, or the built-in set 'arithmetic'")
@with_common
@click.option(
    "--compare",
    default=None,
    metavar="M1,M2,...|all",
    help="run several methods (or all) on the same problems; a ranked table with 95% intervals and a plot",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="problems in flight",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="first N problems only")
@click.option("--question-field", default="question", show_default=True)
@click.option("--answer-field", default="answer", show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default="bench-results.jsonl",
    show_default=True,
    help="per-problem results (JSONL, appended as they finish)",
)
@click.option("--resume", is_flag=True, help="skip the problems already in --output")
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False),
    default="bench-report",
    show_default=True,
    help="--compare: comparison.md and comparison.png",
)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def bench(
    dataset: str,
    method: str,
    samples: int | None,
    max_tokens: int | None,
    temperature: float | None,
    instruction: str | None,
    params: tuple[str, ...],
    options: EngineOptions,
    compare: str | None,
    concurrency: int,
    limit: int | None,
    question_field: str,
    answer_field: str,
    output: str,
    resume: bool,
    report_dir: str,
    as_json: bool,
) -> None:
    """Run a method (or --compare several) over a JSONL dataset and summarise:
    accuracy, tokens per problem, latency, throughput, engine utilisation."""
    import importlib.util
    from pathlib import Path

    from ._bench import load_dataset, read_records, run_bench, write_comparison

    if compare == "all":
        names = list(METHODS)
    else:
        names = [m.strip() for m in compare.split(",") if m.strip()] if compare else [method]
    missing = [m for m in ("matplotlib", "scipy") if importlib.util.find_spec(m) is None]
    if len(names) > 1 and missing:  # before any compute
        raise click.ClickException(
            f"--compare needs {', '.join(missing)} for the report: pip install 'scaffold-actors[bench]'"
        )
    try:
        problems = load_dataset(dataset, question_field, answer_field, limit)
        given = parse_params(params)
        # compared methods share the -p parameters, each those it takes
        chosen = "" if compare else method
        controllers = build_controllers(
            names, chosen, given, samples, max_tokens, temperature, instruction
        )
        # one engine for every method (started for each run, the model loaded once)
        workers = build_workers(options, names[0], max_tokens)
        for m in names[1:]:
            if METHODS[m].uses_reward and "reward" not in workers:
                workers["reward"] = _reward_worker(options, m, workers["generation"])
        summaries = []
        out_path = Path(output)
        for m in names:
            path = out_path if len(names) == 1 else out_path.with_suffix(f".{m}.jsonl")
            if resume:
                done = _done(path, m, problems)
                click.echo(
                    f"resuming {m}: {done} of {len(problems)} problems already done", err=True
                )
            try:
                with _progress(len(problems), m, quiet=as_json) as advance:
                    summary = run_bench(
                        controllers[m],
                        workers,
                        problems,
                        method=m,
                        output=path,
                        concurrency=concurrency,
                        resume=resume,
                        on_done=advance,
                    )
            except KeyboardInterrupt:
                # one line: what is saved, how to go on (the problems in flight are lost)
                click.echo(
                    f"\ninterrupted: {_done(path, m, problems)} of {len(problems)} problems of {m} "
                    f"are saved in {path}; run the same command with --resume to go on",
                    err=True,
                )
                sys.exit(130)
            summary["results"] = str(path)
            summaries.append(summary)
        report: dict[str, Any] | None = None
        if len(names) > 1:
            records = {
                s["method"]: [
                    r for r in read_records(Path(s["results"])) if r.get("method") == s["method"]
                ]
                for s in summaries
            }
            table, plot, rows = write_comparison(summaries, Path(report_dir), records)
            report = {"table": str(table), "plot": str(plot), "ranking": rows}
    except (*USER_ERRORS, FileExistsError, RuntimeError) as exc:
        raise click.ClickException(_one_line(exc)) from None
    if as_json:
        click.echo(json.dumps({"summaries": summaries, "report": report}, indent=2))
        return
    for s in summaries:
        ci = s.get("accuracy_95")
        interval = f" 95% [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        this_run = (
            f", {s['this_run']['problems_per_s']} problems/s, {s['this_run']['tokens_per_s']} "
            f"tokens/s, engine utilisation {s['engine']['utilisation']}"
            if s["this_run"]["problems"]
            else " (all resumed: nothing ran now)"
        )
        click.echo(
            f"{s['method']}: accuracy {s['accuracy']:.3f} ({s['correct']}/{s['problems']}){interval}, "
            f"tokens/problem mean {s['tokens_per_problem']['mean']} p50 {s['tokens_per_problem']['p50']} "
            f"p90 {s['tokens_per_problem']['p90']}, latency p50 {s['latency_s']['p50']} s "
            f"p90 {s['latency_s']['p90']} s{this_run}  -> {s['results']}"
        )
    if report:
        click.echo("\n" + Path(report["table"]).read_text("utf-8"))
        click.echo(f"comparison: {report['table']}, {report['plot']}")


def _done(path: Any, method: str, problems: list[Any]) -> int:
    """How many of ``problems`` have a result of ``method`` in ``path``."""
    from ._bench import read_records

    wanted = {p.index for p in problems}
    return len({r.get("index") for r in read_records(path) if r.get("method") == method} & wanted)


@contextmanager
def _progress(total: int, label: str, quiet: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A progress bar on stderr (rich); yields the per-problem callback.  Not
    on a terminal (a pipe, a log file): a plain line at most every 10 s and one
    at the end."""
    if quiet:
        yield lambda record: None
        return
    if not sys.stderr.isatty():
        started = last = time.monotonic()
        counts = [0, 0]  # done, correct

        def line(record: dict[str, Any]) -> None:
            nonlocal last
            counts[0] += 1
            counts[1] += bool(record.get("correct"))
            now = time.monotonic()
            if now - last >= 10 or counts[0] == total:
                last = now
                click.echo(
                    f"{label}: {counts[0]}/{total} problems, accuracy "
                    f"{counts[1] / counts[0]:.2f}, {now - started:.0f} s",
                    err=True,
                )

        yield line
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    correct = 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(label, total=total, acc="")
        done = 0

        def advance(record: dict[str, Any]) -> None:
            nonlocal correct, done
            done += 1
            correct += bool(record.get("correct"))
            bar.update(task, advance=1, acc=f"accuracy {correct / done:.2f}")

        yield advance


def _one_line(exc: BaseException) -> str:
    # attrs validators raise ValueError(message, attribute, ...): keep the message
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = first.strip() or type(exc).__name__
    if isinstance(exc, EngineError) and "connect" in text.lower():
        text += " (is the server running? check --base-url)"
    return text.splitlines()[0]
