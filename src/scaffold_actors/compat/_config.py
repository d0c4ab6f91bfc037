"""Controllers built from a declarative JSON or YAML config (TensorRT-LLM compatible).

A config is a tree: a mapping with ``"type"`` (a registered controller name) and
``"args"`` (its constructor's keyword arguments) is a controller node; its
arguments are built depth first (nested nodes, lists element-wise), and
``{"$ref": "name"}`` stands for a live object the caller passes in
``objects`` (a tokenizer, a tool list).  ``"type"`` is reserved: a plain dict
argument cannot carry it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ._controllers import (
    BestOfNController,
    ChatWithMCPController,
    Controller,
    MajorityVoteController,
    NativeChatController,
    NativeGenerationController,
    NativeRewardController,
    PRMController,
)

__all__ = [
    "CONTROLLER_REGISTRY",
    "build_controller",
    "load_controller_config",
    "register_controller",
]

#: name -> controller class, as a config's ``"type"`` names it
CONTROLLER_REGISTRY: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        NativeGenerationController,
        NativeChatController,
        NativeRewardController,
        PRMController,
        MajorityVoteController,
        BestOfNController,
        ChatWithMCPController,
    )
}


def _is_controller_class(cls: object) -> bool:
    return isinstance(cls, type) and (
        issubclass(cls, Controller) or callable(getattr(cls, "run", None))
    )


def register_controller(name: str, controller_cls: type) -> None:
    """Make ``controller_cls`` buildable as ``{"type": name}``.

    Accepts generator controllers (:class:`Controller` subclasses) and native
    controller classes (with an async ``run``).  Raises :class:`TypeError` for
    anything else and :class:`ValueError` when ``name`` already names another class.
    """
    if not _is_controller_class(controller_cls):
        raise TypeError(f"{name!r} must name a controller class, got {controller_cls!r}")
    known = CONTROLLER_REGISTRY.get(name)
    if known is not None and known is not controller_cls:
        raise ValueError(f"controller name {name!r} is already registered to {known.__name__}")
    CONTROLLER_REGISTRY[name] = controller_cls


def _value(value: Any, objects: Mapping[str, Any], path: str) -> Any:
    if isinstance(value, Mapping) and "type" in value:
        return build_controller(value, objects, _path=path)
    if isinstance(value, Mapping) and "$ref" in value:
        ref = value["$ref"]
        if ref not in objects:
            have = ", ".join(sorted(objects)) or "none"
            raise KeyError(
                f"{path}: unknown object reference {ref!r}: no such object was given "
                f"(objects: {have})"
            )
        return objects[ref]
    if isinstance(value, list):
        return [_value(v, objects, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def build_controller(
    spec: Mapping[str, Any],
    objects: Mapping[str, Any] | None = None,
    *,
    _path: str = "controller",
) -> Any:
    """The controller a config node describes, nested controllers built first.

    Raises :class:`TypeError` (not a mapping; arguments that do not fit the
    constructor), :class:`ValueError` (no or an unknown ``"type"``, keys other
    than ``"type"`` and ``"args"``) or :class:`KeyError` (an unknown ``$ref``),
    each naming the node's path (``controller.args.generation_controller``).
    """
    objects = objects or {}
    if not isinstance(spec, Mapping):
        raise TypeError(f"{_path}: a controller is a mapping, got {type(spec).__name__}")
    name = spec.get("type")
    if name is None:
        raise ValueError(f"{_path}: missing required 'type' key (the controller's name)")
    cls = CONTROLLER_REGISTRY.get(name)
    if cls is None:
        raise ValueError(
            f"{_path}: unknown controller type {name!r}; known: {', '.join(sorted(CONTROLLER_REGISTRY))}"
        )
    extra = sorted(set(spec) - {"type", "args"})
    if extra:
        raise ValueError(f"{_path}: unexpected keys {extra}; arguments go under 'args'")
    raw = spec.get("args") or {}
    if not isinstance(raw, Mapping):
        raise TypeError(f"{_path}.args: a mapping is needed, got {type(raw).__name__}")
    args = {k: _value(v, objects, f"{_path}.args.{k}") for k, v in raw.items()}
    try:
        return cls(**args)
    except TypeError as e:
        raise TypeError(
            f"{_path}: cannot construct {name} from arguments ({', '.join(sorted(args))}): {e}"
        ) from e


def load_controller_config(
    path: str | os.PathLike[str], objects: Mapping[str, Any] | None = None
) -> Any:
    """Build the controller under the top-level ``"controller"`` key of a JSON or
    YAML file (YAML needs PyYAML; JSON is read with the standard library).

    Raises :class:`ValueError` for a file without a mapping holding
    ``"controller"``, and what :func:`build_controller` raises.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: not JSON, and YAML needs PyYAML installed") from None
        config = yaml.safe_load(text)
    if not isinstance(config, Mapping):
        raise ValueError(f"{path}: the top level must be a mapping, got {type(config).__name__}")
    if "controller" not in config:
        raise ValueError(f"{path}: missing required top-level 'controller' key")
    return build_controller(config["controller"], objects)
