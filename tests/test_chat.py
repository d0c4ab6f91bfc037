"""Chat tasks and messages (TensorRT-LLM 1.2 names), on the engine worker."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest

from engine_bridge import SimulatedEngine
from scaffold_actors import (
    AssistantMessage,
    AsyncScaffoldingLlm,
    ChatTask,
    EngineWorker,
    GenerationTask,
    OpenAIToolDescription,
    RequestContext,
    RoleMessage,
    SystemMessage,
    Task,
    UserMessage,
)
from scaffold_actors.compat import Controller, NativeChatController, ScaffoldingLlm

REPLY = "Paris is the capital."


def test_messages_and_their_dicts() -> None:
    sys_msg = SystemMessage("Be brief.", prefix="Be")
    task = ChatTask.create_from_prompt("Capital of France?", [sys_msg])
    assert [m.role for m in task.messages] == ["system", "user"]
    assert task.messages[0].prefix == "Be"
    task.add_message(AssistantMessage(None, tool_calls=[{"id": "1"}]))  # no content: skipped
    task.add_messages([UserMessage("And Spain?")])
    assert task.messages_to_dict_content() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "user", "content": "And Spain?"},
    ]
    assert task.messages_to_dict_content(2) == [{"role": "user", "content": "And Spain?"}]
    assert AssistantMessage("x", tool_calls=[{"id": "1"}]).to_dict()["tool_calls"] == [{"id": "1"}]
    assert json.loads(str(AssistantMessage("x", reasoning="r")))["reasoning"] == "r"
    back = RoleMessage.from_dict({"role": "assistant", "content": "hi", "reasoning_content": "t"})
    assert isinstance(back, AssistantMessage) and back.reasoning_content == "t"
    tool = OpenAIToolDescription("add", "adds", {"a": {"type": "number"}})
    assert tool.to_dict()["function"]["parameters"]["properties"] == {"a": {"type": "number"}}
    same = ChatTask.create_from_messages(task.messages)
    assert same.messages is task.messages  # the handler appends to the caller's list


def test_trtllm_style_native_chat_controller_appends_the_reply() -> None:
    engine = SimulatedEngine(REPLY)
    with ScaffoldingLlm(
        NativeChatController({"max_tokens": 16}), {"generation": EngineWorker(engine)}
    ) as llm:
        result = llm.generate("Capital of France?")
    assert result.output.output_str == REPLY


def test_a_chat_loop_keeps_the_conversation() -> None:
    seen: list[ChatTask] = []

    class TwoTurns(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            chat = ChatTask.create_from_prompt("Capital of France?", [SystemMessage("Be brief.")])
            chat.worker_tag = "generation"
            chat.max_tokens = 16
            yield [chat]  # one yield: the whole turn, not one step of a stream
            chat.add_message(UserMessage("Sure?"))
            yield [chat]
            seen.append(chat)
            tasks[0].output_str = chat.messages[-1].content

    engine = SimulatedEngine(REPLY)
    with ScaffoldingLlm(TwoTurns(), {"generation": EngineWorker(engine)}) as llm:
        result = llm.generate("q")
    (chat,) = seen
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[2] == AssistantMessage(REPLY, finish_reason=chat.finish_reason)
    assert chat.completion_tokens_num > 0 and chat.prompt_tokens_num > 0
    assert result.output.output_str == REPLY


async def test_chat_tasks_in_a_native_controller_are_traced(autojump_clock: object) -> None:
    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        chat = ChatTask.create_from_prompt("Hi", [SystemMessage("Be brief.")])
        chat.max_tokens = 8
        await ctx.run(chat)
        task.output_str = chat.messages[-1].content
        return task

    async with AsyncScaffoldingLlm(
        method, {"generation": EngineWorker(SimulatedEngine(REPLY))}, trace=True
    ) as llm:
        r = await llm.generate("q")
    assert r.output.output_str == REPLY
    record = r.trace.records[0]
    assert record.task_type == "ChatTask"
    assert record.inputs["messages"][0] == {"role": "system", "content": "Be brief."}
    json.loads(r.trace.to_json())  # a chat trace is plain JSON


def test_tool_calls_are_parsed_from_the_text_and_bounded() -> None:
    from engine_bridge._toolcalls import MAX_CALLS, MAX_SCAN_CHARS
    from scaffold_actors import parse_tool_calls

    text = (
        'Let me add. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 3}"}</tool_call>'
        "<tool_call>not json</tool_call> done"
    )
    content, calls = parse_tool_calls(text)
    assert [c.function.name for c in calls] == ["add", "add"]
    assert calls[0].parsed_arguments() == {"a": 1, "b": 2} and calls[1].parsed_arguments() == {
        "a": 3
    }
    assert [c.id for c in calls] == ["call_0", "call_1"]
    assert content == "Let me add. <tool_call>not json</tool_call> done"  # not a call: kept
    many = '<tool_call>{"name": "f", "arguments": {}}</tool_call>' * (MAX_CALLS + 5)
    assert len(parse_tool_calls(many)[1]) == MAX_CALLS
    hostile = "<tool_call>" + "{" * (MAX_SCAN_CHARS * 2)  # never closed, huge: linear, no call
    assert parse_tool_calls(hostile)[1] == []


def scripted_tool_engine(turns: list[str]) -> SimulatedEngine:
    """Turn i answers turns[i], i = the tool results in the conversation so far."""
    from engine_bridge import SimulatedCall

    def reply(call: SimulatedCall) -> str:
        done = sum(1 for m in call.request.messages or () if m.role == "tool")
        return turns[min(done, len(turns) - 1)]

    return SimulatedEngine(reply)


async def test_a_chat_turn_with_tools_gives_tool_calls(autojump_clock: object) -> None:
    from scaffold_actors import ToolCall

    engine = scripted_tool_engine(
        ['Adding. <tool_call>{"name": "add", "arguments": {"a": 20, "b": 22}}</tool_call>']
    )
    seen: dict[str, Any] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        tool = OpenAIToolDescription(
            "add", "adds", {"a": {"type": "integer"}, "b": {"type": "integer"}}
        )
        chat = ChatTask.create_from_prompt("20 + 22?", [SystemMessage("Be brief.")], tools=[tool])
        chat.max_tokens = 64
        await ctx.run(chat)
        seen["chat"] = chat
        seen["prompt"] = chat.rendered_messages()
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        await llm.generate("q")
    chat = seen["chat"]
    reply = chat.messages[-1]
    assert isinstance(reply, AssistantMessage) and reply.content == "Adding."
    assert chat.finish_reason == reply.finish_reason == "tool_calls"
    (call,) = chat.tool_calls
    assert isinstance(call, ToolCall) and call.function.name == "add"
    assert call.parsed_arguments() == {"a": 20, "b": 22}
    system = seen["prompt"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.")
    assert '"name": "add"' in system["content"]  # the tools are offered to the model
    # the call is part of the conversation the next turn renders
    assert "<tool_call>" in seen["prompt"][-1]["content"]


async def test_tokenize_task_counts_with_the_engines_tokenizer(autojump_clock: object) -> None:
    from scaffold_actors import TokenizeTask

    engine = SimulatedEngine(REPLY)
    counts: dict[str, int | None] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        chat = ChatTask.create_from_prompt("Capital of France?", [SystemMessage("Be brief.")])
        counts["text"] = (await ctx.run(TokenizeTask(input_str="Capital of France?"))).token_count
        counts["chat"] = (await ctx.run(TokenizeTask(chat_task=chat))).token_count
        counts["dicts"] = (
            await ctx.run(TokenizeTask(messages=chat.messages_to_dict_content()))
        ).token_count
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        await llm.generate("q")
        expected = engine.count_prompt_tokens(
            ChatTask.create_from_prompt(
                "Capital of France?", [SystemMessage("Be brief.")]
            ).engine_request(engine_defaults(), stream=False)
        )
    assert counts["chat"] == counts["dicts"] == expected > counts["text"] > 0


async def test_tokenize_task_needs_exactly_one_input(autojump_clock: object) -> None:
    from scaffold_actors import InvalidTaskError, TokenizeTask

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        await ctx.run(TokenizeTask(input_str="a", messages=[{"role": "user", "content": "b"}]))
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(SimulatedEngine())}) as llm:
        with pytest.raises(InvalidTaskError, match="exactly one of"):
            await llm.generate("q")


def engine_defaults() -> Any:
    from engine_bridge import SamplingParams

    return SamplingParams(max_tokens=1)
