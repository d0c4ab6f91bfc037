from __future__ import annotations

import dataclasses

import pytest

from engine_bridge import InvalidRequestError, SamplingParams
from scaffold_actors import (
    GenerationTask,
    InvalidTaskError,
    RewardTask,
    StreamGenerationTask,
    ToolCallTask,
)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_tokens", -5, "must be >= 1"),
        ("max_tokens", 0, "must be >= 1"),
        ("max_tokens", 2.5, "must be an integer"),
        ("temperature", -0.1, "must be >= 0"),
        ("temperature", float("nan"), "must be finite"),
        ("top_p", 0.0, "must be > 0"),
        ("top_p", 1.5, "must be <= 1"),
        ("top_k", -1, "must be >= 0"),
        ("seed", -3, "must be >= 0"),
        ("num_logprobs", -1, "must be >= 0"),
        ("temperature", "hot", "must be a number"),
    ],
)
def test_bad_sampling_value_names_the_field(field: str, value: object, message: str) -> None:
    task = GenerationTask(input_str="hi")
    with pytest.raises(InvalidTaskError, match=message) as info:
        setattr(task, field, value)
    assert info.value.field == f"GenerationTask.{field}"
    with pytest.raises(InvalidTaskError):
        GenerationTask(input_str="hi", **{field: value})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "GenerationTask.input_str"),
        ({"input_str": 3}, "GenerationTask.input_str"),
        (
            {"input_str": "a", "messages": [{"role": "user", "content": "b"}]},
            "GenerationTask.input_str",
        ),
        ({"messages": []}, "GenerationTask.messages"),
        ({"messages": [{"role": "user"}]}, "GenerationTask.messages"),
        ({"input_tokens": []}, "GenerationTask.input_tokens"),
        ({"input_str": "a", "n": 2}, "GenerationTask.n"),
        ({"input_str": "a", "stop": [""]}, "GenerationTask.stop"),
        ({"input_str": "a", "worker_tag": None}, "GenerationTask.worker_tag"),
    ],
)
def test_validate_rejects_bad_tasks(kwargs: dict[str, object], field: str) -> None:
    task = GenerationTask(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidTaskError) as info:
        task.validate()
    assert info.value.field == field
    assert field.split(".")[1] in str(info.value)


def test_a_blank_prompt_is_the_native_runtimes_refusal_not_the_tasks() -> None:
    """validate() checks types; check_prompt() (called by the native runtime at
    submission, not by compat) refuses a blank prompt."""
    task = GenerationTask(input_str="   ")
    task.validate()  # TensorRT-LLM accepts it: compat passes it on
    with pytest.raises(InvalidTaskError) as info:
        task.check_prompt()
    assert info.value.field == "GenerationTask.input_str"


def test_valid_tasks_pass() -> None:
    GenerationTask(input_str="2+2?", max_tokens=4, temperature=0.0, top_p=0.9, stop="\n").validate()
    GenerationTask.create_from_prompt([{"role": "user", "content": "hi"}]).validate()
    RewardTask(input_str="q", candidates=["a", "b"]).validate()
    ToolCallTask(tool_name="python", arguments={"code": "1"}).validate()


def test_stop_accepts_a_string() -> None:
    assert GenerationTask(input_str="x", stop="END").stop == ["END"]


def test_reward_and_tool_tasks_validate() -> None:
    with pytest.raises(InvalidTaskError, match="candidates"):
        RewardTask(input_str="q").validate()
    with pytest.raises(InvalidTaskError, match="input_str"):
        RewardTask(candidates=["a"]).validate()
    with pytest.raises(InvalidTaskError, match="tool_name"):
        ToolCallTask().validate()
    with pytest.raises(InvalidTaskError, match="arguments"):
        ToolCallTask(tool_name="t", arguments="x").validate()  # type: ignore[arg-type]


def test_stream_task_copies_a_generation_task() -> None:
    base = GenerationTask(input_str="q", max_tokens=7, temperature=0.5, stop=["x"])
    s = StreamGenerationTask.create_from_generation_task(base, streaming_step=4)
    assert (s.input_str, s.max_tokens, s.temperature, s.stop, s.streaming_step) == (
        "q",
        7,
        0.5,
        ["x"],
        4,
    )
    with pytest.raises(ValueError):
        StreamGenerationTask(input_str="q", streaming_step=-1)


def test_sampling_params_defaults_and_errors() -> None:
    task = GenerationTask(input_str="q", temperature=0.0)
    p = task.sampling_params(SamplingParams(max_tokens=9, temperature=0.7, top_p=0.5))
    assert (p.max_tokens, p.temperature, p.top_p) == (9, 0.0, 0.5)
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_inputs_and_outputs_round_trip() -> None:
    t = GenerationTask(input_str="q", max_tokens=3)
    assert t.inputs()["input_str"] == "q" and t.inputs()["max_tokens"] == 3
    t.set_outputs({"output_str": "a", "finish_reason": "stop"})
    assert t.outputs()["output_str"] == "a"
    with pytest.raises(KeyError):
        t.set_outputs({"input_str": "no"})


def test_tasks_accept_ad_hoc_attributes() -> None:
    """Ported TensorRT-LLM code tags tasks with attributes of its own."""
    t = GenerationTask(input_str="q")
    t._profiling_in_progress = True  # type: ignore[attr-defined]
    assert t._profiling_in_progress  # type: ignore[attr-defined]


def test_a_deep_copy_shares_nothing_mutable() -> None:
    """TensorRT-LLM's controllers deep-copy a task per sample: the copies must not
    share lists, dicts or messages (a fast copy that shared them would mix samples)."""
    import copy

    from scaffold_actors import ChatTask, SystemMessage

    chat = ChatTask.create_from_prompt("q", [SystemMessage("be brief")])
    chat.stop = ["\n"]
    chat.customized_result_fields["k"] = [1]
    chat.max_tokens = 7
    twin = copy.deepcopy(chat)
    assert type(twin) is ChatTask and twin.max_tokens == 7 and twin.input_str == chat.input_str
    assert twin.messages == chat.messages and twin.messages is not chat.messages
    assert twin.messages[0] is not chat.messages[0]
    twin.stop.append("x")
    twin.customized_result_fields["k"].append(2)
    assert chat.stop == ["\n"] and chat.customized_result_fields == {"k": [1]}
    pair = copy.deepcopy([chat, chat])  # one object copied once, as deepcopy promises
    assert pair[0] is pair[1]
    # empty containers (copied without deepcopy's walk) are new, and stay shared
    # between fields where the original shared them
    twin.streaming_output_list.append("partial")
    assert chat.streaming_output_list == []
    chat.custom_input_params = {}
    chat.custom_output_params = chat.custom_input_params
    twin = copy.deepcopy(chat)
    assert twin.custom_output_params is twin.custom_input_params
    assert twin.custom_input_params is not chat.custom_input_params


def test_assignments_convert_and_validate() -> None:
    """Task classes are dataclasses whose __setattr__ converts and validates
    the fields that have a converter or validator: in __init__ and on every
    assignment, other fields and ad-hoc attributes left alone, and a user's
    ``@dataclass`` subclass (TensorRT-LLM's contrib pattern) validates its own
    validated fields and the inherited ones."""
    import dataclasses

    from scaffold_actors import ChatTask
    from scaffold_actors._tasks import task_field

    for cls in (GenerationTask, StreamGenerationTask, ChatTask):
        task = cls(input_str="q")
        with pytest.raises(InvalidTaskError, match=f"{cls.__name__}.max_tokens"):
            task.max_tokens = 0
        with pytest.raises(InvalidTaskError, match="temperature"):
            task.temperature = -1.0
        assert task.max_tokens is None and task.temperature is None  # nothing set
        task.stop = "##"  # converted
        assert task.stop == ["##"]
        task.output_str = "free text"
        task.note = "an ad-hoc attribute, as TensorRT-LLM controllers attach"  # type: ignore[attr-defined]
        assert task.output_str == "free text" and task.note.startswith("an ad-hoc")  # type: ignore[attr-defined]
        with pytest.raises(InvalidTaskError, match="max_tokens"):
            cls(input_str="q", max_tokens=0)  # __init__ too
        assert cls(input_str="q", stop="x").stop == ["x"]
    with pytest.raises(ValueError, match="streaming_step"):
        StreamGenerationTask(input_str="q").streaming_step = -1

    def non_negative(task: object, name: str, value: int) -> None:
        if value < 0:
            raise ValueError(f"{name} must be >= 0")

    @dataclasses.dataclass
    class Mine(GenerationTask):
        level: int = task_field(default=0, validator=non_negative)
        note: str = "free"

    mine = Mine(input_str="q")
    with pytest.raises(ValueError, match="level"):
        mine.level = -1
    with pytest.raises(ValueError, match="level"):
        Mine(input_str="q", level=-1)
    with pytest.raises(InvalidTaskError, match="max_tokens"):
        mine.max_tokens = 0
    with pytest.raises(InvalidTaskError, match="max_tokens"):
        Mine(input_str="q", max_tokens=0)
    mine.stop = "x"
    assert mine.stop == ["x"] and mine.level == 0 and mine.note == "free"


def test_task_list_copies_are_what_deepcopy_makes() -> None:
    """_deepcopy_lists (MajorityVoteController's and BestOfNController's copy
    per sample) sorts a task's fields once for all copies: each copy must be
    what copy.deepcopy(tasks) makes, share no container with the original or
    another copy, and anything the shortcut cannot copy goes to deepcopy."""
    import copy
    import enum

    from scaffold_actors._tasks import _deepcopy_lists

    class Tag(enum.Enum):
        GEN = "generation"

    def fields(task: object) -> dict[str, object]:
        return dict(vars(task))

    base = GenerationTask(input_str="q", max_tokens=5, stop=["\n", "##"], worker_tag=Tag.GEN)
    base.customized_result_fields["k"] = "v"
    copies = _deepcopy_lists([base], 3)
    assert len(copies) == 3 and all(len(c) == 1 for c in copies)
    for (twin,) in copies:
        assert type(twin) is GenerationTask and fields(twin) == fields(copy.deepcopy(base))
        assert twin.worker_tag is Tag.GEN  # an enum member is itself in a deep copy
        for name in ("stop", "streaming_output_list", "customized_result_fields"):
            assert getattr(twin, name) is not getattr(base, name)
    copies[0][0].stop.append("x")
    copies[0][0].customized_result_fields["k2"] = 1
    assert base.stop == ["\n", "##"] and copies[1][0].stop == ["\n", "##"]
    assert base.customized_result_fields == {"k": "v"} == copies[1][0].customized_result_fields

    # what the shortcut leaves to deepcopy: a nested container, a task listed
    # twice, a container held by two fields, a class with its own __deepcopy__
    nested = GenerationTask(input_str="q")
    nested.customized_result_fields["k"] = [1]
    (twin,), _ = _deepcopy_lists([nested], 2)
    twin.customized_result_fields["k"].append(2)
    assert nested.customized_result_fields == {"k": [1]}
    pair = _deepcopy_lists([base, base], 2)
    assert all(p[0] is p[1] and p[0] is not base for p in pair)
    held = GenerationTask(input_str="q")
    held.custom_input_params = {}
    held.custom_output_params = held.custom_input_params
    (twin,), _ = _deepcopy_lists([held], 2)
    assert twin.custom_output_params is twin.custom_input_params
    assert twin.custom_input_params is not held.custom_input_params

    @dataclasses.dataclass(eq=False)
    class Own(GenerationTask):
        def __deepcopy__(self, memo: dict[int, object]) -> Own:
            new = Own(input_str="own copy")
            memo[id(self)] = new
            return new

    assert [c[0].input_str for c in _deepcopy_lists([Own(input_str="q")], 2)] == ["own copy"] * 2


def test_fresh_task_copies_inputs_like_a_constructed_task() -> None:
    """fresh_task skips the dataclass's __init__ for speed: the copy must equal a task
    built from the same inputs, share no mutable output, and a subclass of
    somebody's still goes through its own __init__ (validators)."""
    from scaffold_actors._tasks import StreamGenerationTask
    from scaffold_actors.methods import fresh_task
    from scaffold_actors.methods._sampler import fresh_copies

    def values(task: GenerationTask) -> dict[str, object]:
        return {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}

    messages = [{"role": "user", "content": "hi"}]
    t = GenerationTask(messages=messages, max_tokens=5, stop=["x"], temperature=0.3, seed=1)
    t.output_str, t.finish_reason = "out", "stop"
    t.customized_result_fields["votes"] = {"1": 2}
    for cls in (GenerationTask, StreamGenerationTask):
        copy = fresh_task(t, cls)
        built = cls(messages=messages, max_tokens=5, stop=["x"], temperature=0.3, seed=1)
        assert type(copy) is cls and values(copy) == values(built)
        # the sparse fields (TensorRT-LLM's rarely set ones) are left to the class:
        # the copy's dict holds only the others (CPython then shares its keys)
        sparse = {f.name for f in dataclasses.fields(cls) if f.metadata.get("sparse")}
        assert sparse and not sparse & copy.__dict__.keys()
        assert copy.__dict__.keys() == built.__dict__.keys() - sparse
        assert copy.stop is not t.stop and copy.messages is not t.messages
        assert copy.customized_result_fields == {}
        assert fresh_task(t, cls).customized_result_fields is not copy.customized_result_fields
        with pytest.raises(InvalidTaskError, match="max_tokens"):
            copy.max_tokens = 0  # still validated on assignment

    @dataclasses.dataclass(eq=False)
    class Checked(GenerationTask):
        def __post_init__(self) -> None:
            self.customized_result_fields["made"] = True

    assert fresh_task(t, Checked).customized_result_fields == {"made": True}
    checked = fresh_copies(t, 2, Checked)
    assert [c.customized_result_fields for c in checked] == [{"made": True}] * 2
    assert checked[0].messages == messages and checked[0].messages is not checked[1].messages

    # fresh_copies (the vote's samples): n such copies, sharing nothing mutable
    a, b = fresh_copies(t, 2)
    assert a.__dict__ == b.__dict__ == fresh_task(t).__dict__
    for name in ("stop", "messages", "customized_result_fields", "streaming_output_list"):
        assert getattr(a, name) is not getattr(b, name), name
    assert a.messages is not None and b.messages is not None
    assert a.messages[0] is not b.messages[0]


def test_a_fresh_copy_takes_no_more_memory_than_a_constructed_task() -> None:
    """A vote holds its samples' copies at once: each copy's attribute dict is
    laid out as ``__init__`` lays one out (on CPython sharing the class's keys
    where the class allows it), never a larger dict of its own."""
    import sys

    from scaffold_actors._tasks import StreamGenerationTask
    from scaffold_actors.methods._sampler import fresh_copies

    for cls in (GenerationTask, StreamGenerationTask):
        t = cls(max_tokens=5, stop=["x"], temperature=0.3)
        t.input_str = "a question"
        built = cls(max_tokens=5, stop=["x"], temperature=0.3)
        built.input_str = "a question"
        for copy in fresh_copies(t, 3, cls):
            assert sys.getsizeof(copy.__dict__) <= sys.getsizeof(built.__dict__), cls
            own = sys.getsizeof(dict(copy.__dict__))  # the same items in a dict of its own
            if cls is GenerationTask:  # 28 keys: within what CPython shares (30)
                assert sys.getsizeof(copy.__dict__) < own / 2, cls
            else:  # 32 keys: no sharing possible, then no larger than its own
                assert sys.getsizeof(copy.__dict__) <= own, cls


def test_the_direct_init_builds_what_the_dataclass_init_builds() -> None:
    """Our task classes' ``__init__`` writes fields straight into the instance
    dict (no hooked assignment per field), yet converts and validates as every
    assignment does, keeps the dataclass's signature and factories, leaves a
    sparse field at its default to the class, and shares CPython's keys; an
    instance of a subclass goes through the dataclass ``__init__``, so a
    subclass's own ``__setattr__`` sees every field."""
    import dataclasses
    import inspect
    import sys

    from scaffold_actors._tasks import RewardTask, StreamGenerationTask

    for cls in (GenerationTask, StreamGenerationTask, RewardTask):
        assert "_original" in cls.__init__.__code__.co_names, cls  # the direct one
    assert list(inspect.signature(GenerationTask).parameters)[:2] == [
        "worker_tag",
        "streaming_output_flag",
    ]
    a, b = GenerationTask(input_str="q", stop="end"), GenerationTask(input_str="q")
    assert a.stop == ["end"] and b.stop == [] and a.stop is not b.stop
    assert a.customized_result_fields is not b.customized_result_fields
    assert "best_of" not in a.__dict__ and a.best_of is None
    assert GenerationTask(best_of=3).__dict__["best_of"] == 3
    with pytest.raises(InvalidTaskError, match=r"GenerationTask\.max_tokens"):
        GenerationTask(input_str="q", max_tokens=0)
    with pytest.raises(InvalidTaskError, match=r"StreamGenerationTask\.top_p"):
        StreamGenerationTask(input_str="q", top_p=2.0)
    with pytest.raises(ValueError, match="streaming_step"):
        StreamGenerationTask(streaming_step=-1)
    with pytest.raises(TypeError, match="bogus"):
        GenerationTask(bogus=1)  # type: ignore[call-arg]
    assert sys.getsizeof(a.__dict__) < sys.getsizeof(dict(a.__dict__)) / 2  # keys shared

    seen: list[str] = []

    class Watched(GenerationTask):
        def __setattr__(self, name: str, value: object) -> None:
            seen.append(name)
            super().__setattr__(name, value)

    w = Watched(input_str="q", max_tokens=4)
    assert {"input_str", "max_tokens", "stop", "best_of"} <= set(seen) and w.max_tokens == 4
    with pytest.raises(InvalidTaskError, match=r"Watched\.max_tokens"):
        Watched(max_tokens=0)

    @dataclasses.dataclass(eq=False)
    class Mine(GenerationTask):
        extra: int = 2

    m = Mine(input_str="q", max_tokens=3)
    assert (m.extra, m.max_tokens, m.stop) == (2, 3, [])
    with pytest.raises(InvalidTaskError, match=r"Mine\.temperature"):
        Mine(temperature=-1.0)
