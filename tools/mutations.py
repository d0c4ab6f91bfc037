"""Remove each promise's mechanism and check that its tests fail.

Each mutation below names a mechanism (the code that keeps a promise), replaces it
with code that does not keep it, runs the tests that prove the promise, and puts
the code back.  A mutation is *killed* when one of its named tests fails in its
body (a ``<failure>`` in pytest's JUnit report) or the tests run past
``--timeout`` (a test that hangs did not pass); an import, collection or fixture
error is ``error``, no verdict.  One that survives means a test cannot fail, and
the script exits 1 (so does an ``error``).  Not run in CI (it runs the tests once per
mutation); run it after changing a mechanism or its test::

    python tools/mutations.py              # every mutation
    python tools/mutations.py --list       # names and what each removes
    python tools/mutations.py NAME [NAME]  # some of them

It prints one JSON object: each mutation's verdict and the seconds it took.
docs/reliability.md lists which test kills which mutation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
SRC = "src/engine_bridge/"
SA = "src/scaffold_actors/"
CONF = "tests/test_engine_conformance.py::"
TRT = "tests/test_trtllm_engine.py::"
RT = "tests/test_runtime_promises.py::"
FID = "tests/test_trtllm_fidelity.py::"
WP = "tests/test_worker_protocol.py::"
SUB = "tests/test_submit.py::"
FAN = "tests/test_fanout.py::"
SG = "tests/test_started_generations.py::"
PG = "tests/test_prefix_groups.py::"
# the Ray tests run in a loopback namespace of their own, started by this one test
RAY = "tests/test_ray.py::test_ray_tests_in_a_loopback_namespace"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    edits: tuple[tuple[str, str], ...]  # (original, mutant); each original occurs once
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "bridge-waits-for-abort-ack",
        "leaving open_stream no longer waits for the engine to confirm the abort",
        SRC + "_bridge.py",
        (("await stream.wait_released()", "await anyio.lowlevel.checkpoint()"),),
        (CONF + "test_leaving_early_aborts[hf]", CONF + "test_leaving_early_aborts[trtllm]"),
    ),
    Mutation(
        "trt-abort-reaches-executor",
        "TRTLLMEngine does not call RequestOutput.abort()",
        SRC + "_engines/_trtllm.py",
        (("result.abort()  # the executor ends it", "pass  # the executor ends it"),),
        (TRT + "test_cancel_calls_abort_in_the_executor",),
    ),
    Mutation(
        "trt-abort-before-submit",
        "an abort requested before the bridge loop submitted the request is forgotten",
        SRC + "_engines/_trtllm.py",
        (("return  # left before it reached the executor", "pass  # mutant"),),
        (TRT + "test_leaving_before_the_first_step_never_leaves_the_request_running",),
    ),
    Mutation(
        "hf-ack-from-the-manager",
        "HFEngine acknowledges a cancel as soon as it is sent, not when the manager dropped it",
        SRC + "_engines/_hf.py",
        (
            (
                "held = {rid for rid in pending if _manager_holds(manager, rid)}",
                "held: set[str] = set()",
            ),
        ),
        (CONF + "test_leaving_early_aborts[hf]",),
    ),
    Mutation(
        "hf-cancel-skips-the-window",
        "a cancel waits in the admission window like an add",
        SRC + "_engines/_hf.py",
        (
            (
                "                break  # a cancel of a request the manager has, or the stop: now",
                "                pass  # mutant: it gathers on",
            ),
        ),
        ("tests/test_hf_engine.py::test_a_cancel_never_waits_for_the_admission_window",),
    ),
    Mutation(
        "simulated-releases-on-leave",
        "SimulatedEngine keeps a request whose consumer left",
        SRC + "_engines/_simulated.py",
        (("        if r.released:\n            return\n", "        return\n"),),
        (CONF + "test_leaving_early_aborts[simulated]",),
    ),
    Mutation(
        "stop-string-holdback",
        "streams emit text that may be the start of a stop string",
        SRC + "_types.py",
        (("    held = 0\n    for s in stops:", "    held = 0\n    for s in ():"),),
        tuple(
            CONF + f"test_a_stop_string_never_leaks_into_a_stream[{e}]"
            for e in ("simulated", "hf", "trtllm", "openai", "process")
        ),
    ),
    Mutation(
        "trt-logprobs-asked-for",
        "num_logprobs=0 is sent as logprobs=0 (the real API then returns none)",
        SRC + "_engines/_trtllm.py",
        (('kw["logprobs"] = max(p.num_logprobs, 1)', 'kw["logprobs"] = p.num_logprobs'),),
        (TRT + "test_logprobs_are_asked_for_never_invented",),
    ),
    Mutation(
        "trt-logprobs-never-invented",
        "missing logprobs are filled with 0.0",
        SRC + "_engines/_trtllm.py",
        (
            ("        if len(lps) < len(token_ids):\n", "        if False:\n"),
            (
                "return tuple(_logprob_value(lps[i], token_ids[i]) for i in range(start, len(token_ids)))",
                "return tuple(_logprob_value(lps[i], token_ids[i]) if i < len(lps) else 0.0 "
                "for i in range(start, len(token_ids)))",
            ),
        ),
        (TRT + "test_missing_logprobs_are_an_error",),
    ),
    Mutation(
        "trt-logprob-values",
        "TRTLLMEngine reports 0.0 instead of the engine's logprob",
        SRC + "_engines/_trtllm.py",
        (('        return float(getattr(lp, "logprob", lp))', "        return 0.0"),),
        (CONF + "test_logprobs_one_per_token[trtllm]",),
    ),
    Mutation(
        "trt-restarts-after-failed-start",
        "a failed start leaves the bridge thread recorded",
        "src/engine_bridge/_bridge.py",
        (
            (
                "                await anyio.to_thread.run_sync(thread.join, 60)\n            self._thread = None\n            raise\n",
                "                await anyio.to_thread.run_sync(thread.join, 60)\n            raise\n",
            ),
        ),
        (TRT + "test_starts_again_after_a_failed_start",),
    ),
    Mutation(
        "generate-cancels-its-requests",
        "a cancelled AsyncScaffoldingLlm.generate() leaves its requests running",
        SA + "_runtime.py",
        (("            for r in results:\n                r._cancel_now()\n", ""),),
        (RT + "test_cancelling_generate_cancels_what_it_submitted",),
    ),
    Mutation(
        "iterators-share-one-event",
        "each iterator of a result replaces the wake-up event",
        SA + "_result.py",
        (
            (
                "            if self._partial_event.is_set():\n                self._partial_event = self._loop.Event()",
                "            self._partial_event = self._loop.Event()",
            ),
        ),
        (RT + "test_two_iterators_over_one_result_both_see_every_update",),
    ),
    Mutation(
        "cancel-grace-overrun-is-loud",
        "a cancel that outlives cancel_grace returns silently",
        SA + "_worker.py",
        (
            (
                "                    if not job.done.is_set():\n                        self.grace_overrun(task)",
                "                    if False:\n                        self.grace_overrun(task)",
            ),
        ),
        (RT + "test_a_cancel_that_outlives_cancel_grace_is_loud",),
    ),
    Mutation(
        "cancel-waits-for-the-handler",
        "a cancelled task's requester does not wait for its handler to unwind",
        SA + "_worker.py",
        (
            (
                "anyio.move_on_after(self.cancel_grace):\n                        await job.done.wait()",
                "anyio.move_on_after(self.cancel_grace):\n                        pass",
            ),
        ),
        ("tests/test_runtime.py::test_cancelling_a_task_waits_for_the_handler_to_unwind",),
    ),
    Mutation(
        "body-exception-unwrapped",
        "the async with body's exception is handed to the task group (and wrapped)",
        SA + "_runtime.py",
        (
            (
                "        try:\n            await stack.aclose()\n        except BaseExceptionGroup as group:\n"
                "            raise_single(group)\n",
                "        await stack.__aexit__(exc_type, exc, tb)\n",
            ),
        ),
        (RT + "test_the_bodys_own_exception_is_not_wrapped",),
    ),
    Mutation(
        "sync-loop-errors-kept",
        "an error that ends the sync facade's loop thread after start-up is dropped",
        SA + "_sync.py",
        (("                self.error = _single(exc)", "                pass"),),
        (RT + "test_sync_shutdown_raises_the_loop_threads_error",),
    ),
    Mutation(
        "sync-shutdown-bounded",
        "ScaffoldingLlm.shutdown joins the loop thread without a bound",
        SA + "_sync.py",
        (("        self.thread.join(timeout)\n", "        self.thread.join()\n"),),
        (RT + "test_sync_shutdown_is_bounded",),
    ),
    Mutation(
        "generators-closed-on-cancel",
        "the generator driver does not close the controller's generator",
        SA + "_controller.py",
        (("            gen.close()\n", "            pass\n"),),
        ("tests/test_compat.py::test_generators_are_closed_on_cancel",),
    ),
    Mutation(
        "equivalence-off-the-loop",
        "answer equivalence (math-verify) runs on the event loop",
        SA + "methods/_voting.py",
        (
            (
                "return await anyio.to_thread.run_sync(first_equivalent, abandon_on_cancel=True)",
                "return first_equivalent()",
            ),
        ),
        ("tests/test_voting.py::test_the_loop_keeps_running_while_answers_are_compared",),
    ),
    Mutation(
        "math-verify-bounded",
        "math-verify's child is waited for without a time bound",
        SA + "methods/_mathcheck.py",
        (
            (
                "line = _read_line(child.stdout, self.timeout)",
                "line = _read_line(child.stdout, 1e9)",
            ),
        ),
        ("tests/test_voting.py::test_a_hostile_answer_is_not_equivalent_and_is_logged",),
    ),
    Mutation(
        "handler-reports-tokens",
        "a plain generation never reports its tokens to the run context (handler and runner-less alike)",
        SA + "_engine_worker.py",
        (
            (
                "    _apply(task, delta)\n    ctx.report_tokens(delta.num_tokens)\n",
                "    _apply(task, delta)\n",
            ),
        ),
        (
            WP + "test_a_budget_stops_a_generation_mid_way[engine]",
            WP + "test_a_budget_charges_each_token_as_it_is_made[engine]",
            WP + "test_a_budget_stops_a_generation_mid_way[runner-engine]",
            WP + "test_a_budget_charges_each_token_as_it_is_made[runner-engine]",
        ),
    ),
    Mutation(
        "stream-listener-reaches-handler",
        "ctx.stream() runs its task without a progress listener",
        SA + "_context.py",
        (("await self._run(task, updates.wake)", "await self._run(task, None)"),),
        (
            WP + "test_a_native_stream_steps_and_a_break_ends_the_generation[doc]",
            WP + "test_a_native_stream_steps_and_a_break_ends_the_generation[engine]",
        ),
    ),
    Mutation(
        "streaming-tasks-declared",
        "EngineWorker does not declare StreamGenerationTask in streaming_tasks",
        SA + "_engine_worker.py",
        (("    streaming_tasks = (StreamGenerationTask,)", "    streaming_tasks = ()"),),
        (WP + "test_a_generator_controller_steps_a_stream_and_cancels_it[engine]",),
    ),
    Mutation(
        "worker-stats-summed",
        "AsyncScaffoldingLlm.stats() ignores what the workers count",
        SA + "_runtime.py",
        (
            (
                "            for name, value in worker.stats().items():",
                "            for name, value in {}.items():",
            ),
        ),
        (
            WP + "test_stats_show_the_workers_own_live_count[doc]",
            WP + "test_stats_show_the_workers_own_live_count[engine]",
        ),
    ),
    Mutation(
        "request-prechecked",
        "the runtime does not ask the workers to check a request's prompt",
        SA + "_runtime.py",
        (("            worker.check_request(prompt)", "            pass"),),
        (
            WP + "test_the_prompt_is_checked_at_submission[doc]",
            WP + "test_the_prompt_is_checked_at_submission[engine]",
        ),
    ),
    Mutation(
        "private-import-across-packages",
        "the framework imports a private module of engine_bridge again",
        SA + "_context.py",
        (
            (
                "from engine_bridge import raise_single",
                "from engine_bridge._bridge import raise_single",
            ),
        ),
        ("tests/test_layers.py::test_every_import_respects_the_layers",),
    ),
    Mutation(
        "task-dict-side-channel",
        "the budget's callback rides on the task's __dict__ again",
        SA + "_context.py",
        (
            (
                "        scope = anyio.CancelScope()\n        for b in budgets:",
                "        task.__dict__['_on_tokens'] = on_tokens\n        scope = anyio.CancelScope()\n        for b in budgets:",
            ),
        ),
        ("tests/test_layers.py::test_no_task_dict_side_channels",),
    ),
    Mutation(
        "scope-end-shielded",
        "on_scope_end runs unshielded, so a cancelled request never releases its scopes",
        SA + "_context.py",
        (
            (
                "with anyio.CancelScope(shield=True), anyio.move_on_after(self._scope_grace) as bound:",
                "with anyio.CancelScope(), anyio.move_on_after(self._scope_grace) as bound:",
            ),
        ),
        ("tests/test_scopes.py::test_scopes_end_when_a_request_fails_or_is_cancelled[cancel]",),
    ),
    Mutation(
        "scopes-ended",
        "execution scopes are entered but never ended (no on_scope_end)",
        SA + "_context.py",
        (
            (
                "            if self._scope_workers:\n                await self._end_scope",
                "            if False:\n                await self._end_scope",
            ),
        ),
        ("tests/test_scopes.py::test_branches_get_child_scopes_and_end_after_their_tasks",),
    ),
    Mutation(
        "handler-sees-submitter-scope",
        "a handler runs without the execution scope of the code that submitted its task",
        SA + "_worker.py",
        (("scope_token = current_scope.set(job.scope)", "scope_token = current_scope.set(None)"),),
        ("tests/test_scopes.py::test_trtllm_style_parallel_process_forks_scopes",),
    ),
    Mutation(
        "chat-reply-appended",
        "the chat handler does not append the assistant's reply to the conversation",
        SA + "_engine_worker.py",
        (
            (
                "        task.messages.append(\n            AssistantMessage(",
                "        (\n            AssistantMessage(",
            ),
        ),
        ("tests/test_chat.py::test_a_chat_loop_keeps_the_conversation",),
    ),
    Mutation(
        "chat-turn-not-stepped",
        "a generator controller's yield of a ChatTask returns after one streamed token",
        SA + "_controller.py",
        (
            (
                "return type(task) in self.ctx.resolve(task).worker.streaming_tasks",
                "return isinstance(task, self.ctx.resolve(task).worker.streaming_tasks)",
            ),
        ),
        ("tests/test_chat.py::test_a_chat_loop_keeps_the_conversation",),
    ),
    Mutation(
        "mcp-arguments-checked",
        "MCP tool arguments are sent without checking them against the tool's schema",
        SA + "_mcp.py",
        (
            (
                "        if error is not None:\n            where",
                "        if False:\n            where",
            ),
        ),
        ("tests/test_mcp.py::test_bad_calls_are_refused_before_the_call_and_lose_nothing",),
    ),
    Mutation(
        "mcp-dead-server-reconnected",
        "a connection that died during a call is kept, so later calls keep failing",
        SA + "_mcp.py",
        (
            (
                "            conn.close.set()  # the next call reconnects\n",
                "            pass  # the next call reconnects\n",
            ),
        ),
        ("tests/test_mcp.py::test_a_server_that_dies_mid_call_fails_that_call_and_is_reconnected",),
    ),
    Mutation(
        "mcp-scope-sessions-closed",
        "MCPWorker keeps the sessions of an execution scope after it ended",
        SA + "_mcp.py",
        (("        if not self.per_scope:\n            return\n", "        return\n"),),
        ("tests/test_mcp.py::test_sessions_per_scope_are_separate_and_closed_at_scope_end",),
    ),
    Mutation(
        "agent-sees-refused-arguments",
        "ReActAgent lets a worker's refusal of the model's arguments fail the request",
        SA + "methods/_agent.py",
        (
            (
                "                except InvalidTaskError as e:\n",
                "                except ZeroDivisionError as e:\n",
            ),
        ),
        ("tests/test_mcp.py::test_a_react_agent_uses_mcp_tools_and_sees_its_mistakes",),
    ),
    Mutation(
        "http-count-asks-the-server",
        "OpenAIEngine.count_tokens answers 0 instead of asking the server's /tokenize",
        SRC + "_engines/_openai.py",
        (
            (
                '        response = await self._post_root(\n            "/tokenize", ask,',
                '        return 0\n        response = await self._post_root(\n            "/tokenize", ask,',
            ),
        ),
        (CONF + "test_counts_tokens_as_its_own_usage_reports_them[openai]",),
    ),
    Mutation(
        "chat-tool-calls-parsed",
        "an answer to a request with tools keeps the model's <tool_call> blocks as plain text",
        SRC + "_toolcalls.py",
        (
            (
                "    if offered:\n        return parse_tool_calls(text)",
                "    if False:\n        return parse_tool_calls(text)",
            ),
        ),
        (
            "tests/test_chat.py::test_a_chat_turn_with_tools_gives_tool_calls",
            "tests/test_openai_engine.py::test_the_official_client_gets_tool_calls",
        ),
    ),
    Mutation(
        "chat-mcp-refusal-answered",
        "ChatWithMCPController lets a refused tool call fail the request",
        SA + "compat/_controllers.py",
        (
            (
                "                    except InvalidTaskError as e:\n",
                "                    except ZeroDivisionError as e:\n",
            ),
        ),
        ("tests/test_mcp.py::test_trtllm_style_chat_with_mcp_tools",),
    ),
    Mutation(
        "http-engine-sends-tools",
        "OpenAIEngine leaves a chat's tools out of the request body",
        SRC + "_engines/_openai.py",
        (
            (
                '            if request.tools:\n                body["tools"]',
                '            if False:\n                body["tools"]',
            ),
        ),
        (
            "tests/test_openai_engine.py::test_the_http_engine_passes_tools_and_reads_tool_calls[False]",
        ),
    ),
    Mutation(
        "stream-tool-call-fragments",
        "OpenAIEngine ignores the tool-call fragments of a streamed answer",
        SRC + "_engines/_openai.py",
        (
            (
                "                state.tool_fragments(choice)\n"
                "                if not state.add(_delta(choice, chat, state.request)):",
                "                if not state.add(_delta(choice, chat, state.request)):",
            ),
        ),
        (
            "tests/test_openai_engine.py::test_the_http_engine_passes_tools_and_reads_tool_calls[True]",
        ),
    ),
    Mutation(
        "tools-offered-to-the-model",
        "engines without a tool-call API render a chat without its tools",
        SRC + "_toolcalls.py",
        (
            (
                "    if tools:\n        offer = tool_instructions(tools)",
                "    if False:\n        offer = tool_instructions(tools)",
            ),
        ),
        (
            CONF + "test_offered_tools_reach_the_model[simulated]",
            CONF + "test_offered_tools_reach_the_model[openai]",
        ),
    ),
    Mutation(
        "reasoning-kept-apart",
        "OpenAIEngine drops the reasoning a server sends apart from the answer",
        SRC + "_engines/_openai.py",
        (
            (
                'reasoning = message.get("reasoning_content") or message.get("reasoning") or ""',
                'reasoning = ""',
            ),
        ),
        (
            "tests/test_openai_engine.py::test_reasoning_apart_from_the_answer_is_kept_apart[True]",
            "tests/test_openai_engine.py::test_reasoning_apart_from_the_answer_is_kept_apart[False]",
        ),
    ),
    Mutation(
        "streaming-output-shown",
        "tasks with streaming_output_flag run without their partial outputs reaching the result",
        SA + "_controller.py",
        (
            (
                "        shown = [t for t in plain if t.streaming_output_flag]",
                "        shown: list[Task] = []",
            ),
        ),
        (
            "tests/test_compat.py::test_streaming_output_flag_streams_partial_outputs_in_trtllm_style",
        ),
    ),
    Mutation(
        "http-logprob-never-invented",
        "OpenAIEngine fills a logprob the server left out with 0.0",
        SRC + "_engines/_openai.py",
        (
            ('        if any("logprob" not in c for c in entries):', "        if False:"),
            (
                '        lps = [c["logprob"] for c in entries]',
                '        lps = [c.get("logprob", 0.0) for c in entries]',
            ),
        ),
        (
            "tests/test_openai_engine.py::test_a_server_answer_missing_a_logprob_or_with_bad_tool_calls_is_an_engine_error",
        ),
    ),
    Mutation(
        "worker-inbox-bounded",
        "a worker's inbox grows without bound (no backpressure)",
        SA + "_worker.py",
        (
            (
                "anyio.create_memory_object_stream[_Job](self.worker.inbox_size)",
                "anyio.create_memory_object_stream[_Job](float('inf'))",
            ),
        ),
        ("tests/test_runtime.py::test_worker_inbox_and_concurrency_are_bounded",),
    ),
    Mutation(
        "hf-drop-returns-blocks",
        "HFEngine.drop_kv_cache counts the blocks but leaves them in transformers' ledger",
        SRC + "_engines/_hf.py",
        (
            ("                del ledger.cached_blocks[block]\n", ""),
            ("                del ledger.hash_to_block[parent]\n", ""),
            ("                del ledger.block_to_hash[block]\n", ""),
            ("                cache.pool.free_blocks(allocator.index, [block])\n", ""),
        ),
        ("tests/test_hf_engine.py::test_a_finished_chat_is_freed_from_transformers_prefix_cache",),
    ),
    Mutation(
        "drop-keeps-the-system-blocks",
        "the simulated engine's drop frees the kept messages' blocks too",
        SRC + "_engines/_simulated.py",
        (("        for h in chain[first:]:", "        for h in chain:"),),
        (
            "tests/test_kv_hints.py::test_the_simulated_engine_frees_the_chat_past_its_system_blocks",
        ),
    ),
    Mutation(
        "drop-hint-reaches-the-server",
        "OpenAIEngine.drop_kv_cache answers without asking the server",
        SRC + "_engines/_openai.py",
        (
            (
                "        response = await self._post_root(path, body, unsupported)",
                "        return None",
            ),
        ),
        ("tests/test_kv_hints.py::test_the_hint_reaches_a_servers_engine",),
    ),
    Mutation(
        "drop-scope-claims-each-chat-once",
        "drop_kv_cache_scope's collection claims no chat, so outer scopes drop inner chats again",
        SA + "compat/_task_collection.py",
        (("                ChatCollection._claimed.add(task)\n", ""),),
        ("tests/test_kv_hints.py::test_trtllm_style_drop_kv_cache_scope_drops_each_chat_once",),
    ),
    Mutation(
        "task-collection-forwards-throws",
        "a task collection's hooks no longer throw a failed yield into the controller",
        SA + "compat/_task_collection.py",
        (("            thrown = exc\n", "            raise\n"),),
        ("tests/test_compat.py::test_task_errors_are_thrown_into_the_generator",),
    ),
    Mutation(
        "ignore-eos-reaches-the-engine",
        "HFEngine does not pass the per-request end-of-sequence override",
        SRC + "_engines/_hf.py",
        (('            kwargs["eos_token_id"] = -1  # no end-of-sequence', "            pass  # no end-of-sequence"),),
        (CONF + "test_ignore_eos_generates_to_max_tokens[hf]",),
    ),
    Mutation(
        "replay-fork-waits-for-parent",
        "ReplayEngine opens a fork's branches without waiting for the parent branch",
        SA + "compat/_replay.py",
        (("                await manager.drain_branch(path)\n", ""),),
        (
            "tests/test_trace_replay.py::"
            "test_tool_calls_take_their_recorded_time_and_forks_wait_for_the_parent",
        ),
    ),
    Mutation(
        "replay-shares-system-prefixes",
        "every conversation's system message gets fresh token ids (no shared template prefix)",
        SA + "compat/_replay.py",
        (
            (
                '        key = event.system_prompt_id or f"conv:{event.conversation_id}"',
                "        key = str(id(event))",
            ),
        ),
        ("tests/test_trace_replay.py::test_a_recorded_run_is_replayed_branch_by_branch",),
    ),
    Mutation(
        "apiary-closes-branch-sandboxes",
        "ApiaryMCPWorker keeps a branch's connection open after the branch ended",
        SA + "_mcp.py",
        (
            (
                "            conn.close.set()\n            await conn.ended.wait()",
                "            pass",
            ),
        ),
        ("tests/test_mcp.py::test_apiary_gives_each_scope_its_own_sandbox_connection",),
    ),
    Mutation(
        "mcp-session-slots",
        "MCPWorker ignores max_sessions",
        SA + "_mcp.py",
        (
            (
                "                await self._slots.acquire()  # released when the session ends",
                "                pass",
            ),
            (
                "            if self._slots is not None:\n                self._slots.release()\n",
                "",
            ),
        ),
        ("tests/test_mcp.py::test_apiary_waits_for_a_free_connection",),
    ),
    Mutation(
        "sync-generate-interrupt-cancels",
        "a Ctrl-C during the sync generate(batch) leaves its requests running",
        SA + "_sync.py",
        (("                portal.call(cancel_all)", "                pass"),),
        (RT + "test_sync_generate_interrupted_cancels_its_requests",),
    ),
    Mutation(
        "script-refuses-the-unexpected",
        "a Script answers a prompt it has no rule for with an empty answer",
        SA + "testing/_script.py",
        (
            (
                '            raise LookupError(f"the script has no answer for the prompt {prompt[-200:]!r}")',
                '            return ""',
            ),
        ),
        ("tests/test_testing_kit.py::test_a_script_answers_in_order_then_by_rule",),
    ),
    Mutation(
        "stall-in-the-engine",
        "the simulated engine ignores a stall (SimulatedOutput.delay)",
        SRC + "_engines/_simulated.py",
        (("            r.ready_at = anyio.current_time() + out.delay", "            pass"),),
        ("tests/test_testing_kit.py::test_stalls_and_failures_happen_in_the_engine",),
    ),
    Mutation(
        "finish-order-applied",
        "Script.finish_order leaves the finishing order to chance",
        SA + "testing/_script.py",
        (("        if rank is not None:", "        if False:"),),
        ("tests/test_testing_kit.py::test_finish_order_decides_which_sample_counts_first",),
    ),
    Mutation(
        "kit-checks-leaks",
        "simulated_runtime no longer checks for leaks on leaving",
        SA + "testing/_runtime.py",
        (("            assert_nothing_left(llm, engine)", "            pass"),),
        ("tests/test_testing_kit.py::test_leaks_are_named",),
    ),
    Mutation(
        "self-verifier-counts-a-token-once",
        "SelfVerifier adds a Yes token's probability once per draw (a sum of draws, not a probability)",
        SA + "_self_verifier.py",
        (
            (
                "mass[first if first is not None else text] = math.exp(lp)",
                "mass[len(mass)] = math.exp(lp)",
            ),
        ),
        ("tests/test_self_verifier.py::test_a_yes_token_drawn_several_times_counts_once",),
    ),
    Mutation(
        "self-verifier-verdicts-abort",
        "SelfVerifier's verdicts run outside the task's cancel scope (shielded)",
        SA + "_self_verifier.py",
        (
            (
                "            async with self.engine.open_stream(request) as deltas:",
                "            with anyio.CancelScope(shield=True):\n"
                "              async with self.engine.open_stream(request) as deltas:",
            ),
        ),
        (
            "tests/test_self_verifier.py::"
            "test_cancelling_the_request_aborts_the_verdicts_in_the_engine",
        ),
    ),
    Mutation(
        "bench-ranks-by-accuracy",
        "the comparison keeps the order the methods ran in",
        SA + "cli/_bench.py",
        (
            (
                'key=lambda s: (-(s["accuracy"] or 0.0), s["tokens_per_problem"]["mean"] or 0.0)',
                "key=lambda s: 0",
            ),
        ),
        ("tests/test_bench.py::test_comparison_intervals_pareto_front_and_paired_differences",),
    ),
    Mutation(
        "verdict-tokens-in-usage",
        "a RewardTask's tokens no longer count in the request's usage",
        SA + "_context.py",
        (
            (
                "if isinstance(task, (GenerationTask, RewardTask)):",
                "if isinstance(task, GenerationTask):",
            ),
        ),
        ("tests/test_self_verifier.py::test_verdict_tokens_count_in_the_usage",),
    ),
    Mutation(
        "gguf-conversion-read-back",
        "a start never reads the stored GGUF conversion (converts every time)",
        SRC + "_engines/_hf.py",
        (
            (
                "    if stored:\n        source, kw = str(folder), {}",
                "    if False:\n        source, kw = str(folder), {}",
            ),
        ),
        ("tests/test_hf_engine.py::test_the_gguf_conversion_is_cached_on_disk",),
    ),
    Mutation(
        "openai-client-matches-stop-strings",
        "OpenAIEngine trusts the server to honour stop strings (transformers serve does not)",
        SRC + "_engines/_openai.py",
        (
            (
                "        if not stops:\n            return delta\n",
                "        if True:\n            return delta\n",
            ),
        ),
        (
            CONF + "test_stop_strings[transformers-serve]",
            CONF + "test_a_stop_string_never_leaks_into_a_stream[transformers-serve]",
        ),
    ),
    Mutation(
        "openai-no-silent-logprob-gap",
        "OpenAIEngine passes on an answer without the logprobs it asked for",
        SRC + "_engines/_openai.py",
        (
            (
                "if request.params.num_logprobs is not None and not lps and (text or ids):",
                "if False:",
            ),
        ),
        (CONF + "test_logprobs_one_per_token[transformers-serve]",),
    ),
    Mutation(
        "serve-streams-single-sample-tokens",
        "scaffold serve sends a single-sample method's text only at the end",
        SA + "cli/_serve.py",
        (
            (
                "            if not partial.details and text.startswith(sent):",
                "            if False:",
            ),
        ),
        ("tests/test_serve.py::test_a_single_sample_method_streams_its_tokens",),
    ),
    Mutation(
        "agent-shows-the-format",
        "ReActAgent describes the format only (no worked example) to a small model",
        SA + "methods/_agent.py",
        (('        shown = self.example and "python" in self.tools', "        shown = False"),),
        ("tests/test_examples.py::test_the_react_agent_calls_python_on_the_embedded_model",),
    ),
    Mutation(
        "dynasor-placeholder-probes",
        'Dynasor-CoT counts a placeholder probe ("answer") as an answer',
        SA + "methods/_dynasor.py",
        (("        if is_placeholder(answer):  #", "        if False:  #"),),
        ("tests/test_dynasor.py::test_hedging_and_placeholder_probes_do_not_count",),
    ),
    Mutation(
        "bench-says-what-is-saved-on-ctrl-c",
        "Ctrl-C in bench falls through to click's bare 'Aborted!'",
        SA + "cli/_main.py",
        (("            except KeyboardInterrupt:\n", "            except ZeroDivisionError:\n"),),
        ("tests/test_bench.py::test_ctrl_c_stops_the_bench_with_one_line_and_resume_goes_on",),
    ),
    Mutation(
        "fresh-task-fresh-mutables",
        "a task copied without attrs' __init__ shares its class's mutable defaults",
        SA + "methods/_sampler.py",
        (
            (
                "        values[name] = factory()\n",
                "        values[name] = _SHARED.setdefault(name, factory())\n",
            ),
            ("_BLANKS = {", "_SHARED: dict[str, Any] = {}\n_BLANKS = {"),
        ),
        ("tests/test_tasks.py::test_fresh_task_copies_inputs_like_a_constructed_task",),
    ),
    Mutation(
        "handle-wakes-its-waiter",
        "a finished Parallel child does not wake a handle.wait() already waiting",
        SA + "_context.py",
        (("        if self._done is not None:\n            self._done.set()\n", "        pass\n"),),
        ("tests/test_public_api.py::test_parallel_children_on_both_backends",),
    ),
    Mutation(
        "runner-retires-on-a-leaked-context-variable",
        "a runner whose handler left a context variable set takes the next task anyway",
        SA + "_worker.py",
        (("            or not _same_context(self._clean, contextvars.copy_context())\n", ""),),
        (
            "tests/test_public_api.py::"
            "test_a_context_variable_a_handler_leaves_set_does_not_reach_the_next_task",
        ),
    ),
    Mutation(
        "idle-runner-hand-off-waits-its-turn",
        "a task is handed to an idle runner even while others wait in the inbox before it",
        SA + "_worker.py",
        (
            (
                "            or self._in_inbox\n            or self._waiting_senders\n            or self._closed\n",
                "            or self._closed\n",
            ),
        ),
        (RT + "test_a_task_goes_to_an_idle_runner_only_when_nothing_waits_before_it",),
    ),
    Mutation(
        "submitted-jobs-waited-for-at-exit",
        "leaving a Parallel block no longer waits for its submitted tasks to be over",
        SA + "_context.py",
        (
            (
                "            if self._jobs:\n                await self._wait_jobs()",
                "            pass",
            ),
        ),
        (SUB + "test_leaving_the_block_waits_for_submitted_tasks",),
    ),
    Mutation(
        "submitted-jobs-cancelled-with-the-block",
        "a block left by an error or a cancellation does not cancel its submitted tasks",
        SA + "_context.py",
        (("        for handle in list(self._jobs):\n            handle.cancel()", "        pass"),),
        (
            SUB + "test_cancelling_the_request_aborts_submitted_tasks_before_it_returns",
            SUB + "test_a_failing_submitted_task_fails_the_block_and_aborts_the_rest",
        ),
    ),
    Mutation(
        "submitted-failure-fails-the-block",
        "a submitted task's error stays on its handle instead of leaving the block",
        SA + "_context.py",
        (
            (
                "if handle._error is not None and self._failure is None:",
                "if handle._error is not None and self._failure is None and False:",
            ),
        ),
        (SUB + "test_a_failing_submitted_task_fails_the_block_and_aborts_the_rest",),
    ),
    Mutation(
        "queued-submitted-task-over-when-cancelled",
        "a submitted task cancelled while still queued is not over until the actor gets to it",
        SA + "_context.py",
        (
            (
                "            end.set()  # never reached a runner",
                "            pass  # never reached a runner",
            ),
        ),
        (SUB + "test_a_queued_submitted_task_cancelled_never_reaches_the_engine",),
    ),
    Mutation(
        "submit-keeps-token-budgets",
        "a task submitted under a token budget goes to the actor as a job the budget cannot see",
        SA + "_context.py",
        (("            or (_BUDGETS.get() and isinstance(task, GenerationTask))\n", ""),),
        (SUB + "test_under_a_token_budget_submit_is_cut_like_ctx_run",),
    ),
    Mutation(
        "submit-waits-for-room-in-a-child",
        "a task submitted to a full inbox is taken as sent (lost) instead of waiting for room",
        SA + "_worker.py",
        (
            (
                "        except anyio.WouldBlock:\n            return False\n        self._in_inbox += 1",
                "        except anyio.WouldBlock:\n            return True\n        self._in_inbox += 1",
            ),
        ),
        (SUB + "test_a_full_inbox_makes_submit_wait_in_a_child_in_order",),
    ),
    Mutation(
        "submitted-grace-overrun-is-loud",
        "a submitted task that outlives cancel_grace is neither warned about nor counted",
        SA + "_context.py",
        (
            (
                "            for handle in self._jobs:\n                task = handle._job.task",
                "            for handle in ():\n                task = handle._job.task",
            ),
        ),
        (
            SUB + "test_a_submitted_task_that_outlives_cancel_grace_is_loud",
            FAN + "test_a_task_that_outlives_cancel_grace_is_loud",
        ),
    ),
    Mutation(
        "runner-scope-renewed-after-a-cancel",
        "a runner keeps its cancel scope after a task's cancellation, so the next task starts cancelled",
        SA + "_worker.py",
        (
            (
                "                    if scope.cancel_called:\n                        break",
                "                    if False:\n                        break",
            ),
        ),
        (RT + "test_a_runners_next_task_is_not_hit_by_the_last_ones_cancellation",),
    ),
    Mutation(
        "parked-trio-runner-forgotten-when-cancelled",
        "a runner cancelled while parked (trio) can still be handed a job, which is lost",
        SRC + "lowlevel.py",
        (("        self.waiter = None  # cancelled: nothing may be sent", "        pass  # "),),
        ("tests/test_backend.py::test_a_cancelled_parked_task_is_sent_nothing[trio]",),
    ),
    Mutation(
        "parked-asyncio-runner-refused-when-cancelled",
        "a runner cancelled while parked (asyncio), not resumed yet, is handed a job",
        SRC + "lowlevel.py",
        (("    if future is None or future.done():", "    if future is None:"),),
        ("tests/test_backend.py::test_a_cancelled_parked_task_is_sent_nothing[asyncio]",),
    ),
    Mutation(
        "vote-partial-is-a-snapshot",
        "a vote's partial output, built when read, shows the votes as they are then, not as of its sample",
        SA + "methods/_majority_vote.py",
        (
            (
                "                        dict(state.counts),\n",
                "                        state.counts,\n",
            ),
        ),
        ("tests/test_voting.py::test_partial_outputs_show_the_votes_as_of_their_sample",),
    ),
    Mutation(
        "fresh-copy-shares-the-class-keys",
        "a sample's copy gets an attribute dict of its own (filled from a compact dict), not one sharing the class's keys",
        SA + "methods/_sampler.py",
        (
            (
                "    base = plain.copy()  # as laid out in the defaults: so is each copy filled from it\n    base.update(fields)\n",
                "    base = {**plain, **fields}\n",
            ),
        ),
        ("tests/test_tasks.py::test_a_fresh_copy_takes_no_more_memory_than_a_constructed_task",),
    ),
    Mutation(
        "generator-return-aborts-open-streams",
        "a stream still open when the generator that started it returns runs on to its end",
        SA + "_controller.py",
        (
            (
                "                        tg.cancel_scope.cancel()  # abort the streams still open\n",
                "",
            ),
        ),
        ("tests/test_compat.py::test_a_stream_left_open_is_aborted_when_its_generator_returns",),
    ),
    Mutation(
        "task-list-copies-share-containers",
        "a controller's per-sample task copies share the original's lists and dicts",
        SA + "_tasks.py",
        (("        fields[name] = flat(value)\n", "        fields[name] = value\n"),),
        ("tests/test_tasks.py::test_task_list_copies_are_what_deepcopy_makes",),
    ),
    Mutation(
        "task-assignment-validated",
        "a task field's validator no longer runs when the field is assigned",
        SA + "_tasks.py",
        (
            (
                "            if validator is not None:\n                validator(self, name, value)\n",
                "            if False:\n                pass\n",
            ),
        ),
        ("tests/test_tasks.py::test_assignments_convert_and_validate",),
    ),
    Mutation(
        "task-assignment-converted",
        "a task field's converter no longer runs when the field is assigned",
        SA + "_tasks.py",
        (("                value = converter(value)\n", "                pass\n"),),
        ("tests/test_tasks.py::test_assignments_convert_and_validate",),
    ),
    Mutation(
        "worker-concurrency-bounded",
        "a worker's actor starts queued tasks past max_concurrency instead of waiting for a slot",
        SA + "_worker.py",
        (
            (
                "                            if not slots.take_nowait():\n"
                "                                await slots.take()  # every slot busy: wait for one\n",
                "                            slots.take_nowait()\n",
            ),
        ),
        ("tests/test_runtime.py::test_worker_inbox_and_concurrency_are_bounded",),
    ),
    Mutation(
        "simulated-step-yields-between-chunks",
        "a simulated engine step advances every request in one go, holding the loop for the whole batch",
        SRC + "_engines/_simulated.py",
        (("                if n % chunk == 0:\n", "                if False:\n"),),
        ("tests/test_simulated_engine.py::test_a_large_step_lets_the_loop_run_between_chunks",),
    ),
    Mutation(
        "admission-slot-of-a-cancelled-requester-goes-on",
        "a requester cancelled after it was handed an admission slot (asyncio) keeps it: the slot is lost",
        SA + "_backend.py",
        (
            (
                "            if me.granted:\n                self.give_back()  # handed a slot, then cancelled: the next one's\n            elif",
                "            if me.granted:\n                pass\n            elif",
            ),
        ),
        (
            "tests/test_backend.py::test_a_slot_given_back_as_a_waiting_requester_is_cancelled_goes_on",
        ),
    ),
    Mutation(
        "admission-in-arrival-order",
        "requests waiting at max_in_flight are admitted last come, first served",
        SA + "_backend.py",
        (
            (
                "            waiter = self._waiting.popleft()\n",
                "            waiter = self._waiting.pop()\n",
            ),
        ),
        ("tests/test_runtime.py::test_requests_waiting_at_the_cap_are_admitted_in_order",),
    ),
    Mutation(
        "generation-controller-clone-independent",
        "a cloned NativeGenerationController shares its sampling parameters with the original",
        SA + "compat/_controllers.py",
        (
            (
                "        new.sampling_params = {\n",
                "        new.sampling_params = self.sampling_params or {\n",
            ),
        ),
        ("tests/test_compat.py::test_a_cloned_generation_controller_shares_nothing_it_may_change",),
    ),
    Mutation(
        "fanout-steps-in-branch-scopes",
        "a ParallelProcess sub-generator is stepped in its parent's scope, not its branch's",
        SA + "_controller.py",
        (
            (
                "            token = current_scope.set(branch.scope)",
                "            token = current_scope.set(current_scope.get())",
            ),
        ),
        (FAN + "test_sub_generators_step_and_run_their_tasks_in_branch_scopes",),
    ),
    Mutation(
        "fanout-tasks-in-branch-scopes",
        "a task a sub-generator yields runs outside its branch's scope",
        SA + "_controller.py",
        (
            (
                "_Job.__init__(self, task, request_id, None, None, self, branch.scope)",
                "_Job.__init__(self, task, request_id, None, None, self, None)",
            ),
        ),
        (FAN + "test_sub_generators_step_and_run_their_tasks_in_branch_scopes",),
    ),
    Mutation(
        "fanout-tasks-accounted",
        "a sub-generator's tasks are left out of the request's usage and trace",
        SA + "_controller.py",
        (("        ctx._account(step.task, step.start, end, status, error)\n", ""),),
        (FAN + "test_sub_generators_step_and_run_their_tasks_in_branch_scopes",),
    ),
    Mutation(
        "fanout-task-error-thrown-in",
        "a sub-generator's task error is dropped instead of thrown in at its yield",
        SA + "_controller.py",
        (
            (
                "                exc = branch.error\n",
                "                exc = None\n",
            ),
        ),
        (FAN + "test_a_task_error_is_thrown_into_its_generator_after_its_siblings_are_aborted",),
    ),
    Mutation(
        "fanout-siblings-aborted",
        "a task error in a sub-generator's yield leaves the yield's other tasks running",
        SA + "_controller.py",
        (("            for other in branch.jobs:\n                other.cancel()\n", ""),),
        (FAN + "test_a_task_error_is_thrown_into_its_generator_after_its_siblings_are_aborted",),
    ),
    Mutation(
        "fanout-bad-task-thrown-in",
        "a bad task a sub-generator yields fails the request instead of being thrown in",
        SA + "_controller.py",
        (
            (
                "                exc = error\n                continue",
                "                raise",
            ),
        ),
        (FAN + "test_a_bad_task_is_thrown_into_its_generator_and_nothing_of_its_yield_runs",),
    ),
    Mutation(
        "fanout-tasks-cancelled-on-error",
        "a generator error leaving a fan-out lets the other branches' tasks run on",
        SA + "_controller.py",
        (
            (
                "        except BaseException:\n            self._cancel_jobs()\n            raise",
                "        except BaseException:\n            raise",
            ),
        ),
        (FAN + "test_a_generator_error_aborts_every_branch_and_leaves_unchanged",),
    ),
    Mutation(
        "fanout-waits-for-its-tasks",
        "a fan-out left by an error or a cancellation returns before its tasks are over",
        SA + "_controller.py",
        (
            (
                "                if self._jobs:\n                    await self._wait_jobs()",
                "                pass",
            ),
        ),
        (
            FAN + "test_a_generator_error_aborts_every_branch_and_leaves_unchanged[runner]",
            FAN
            + "test_cancelling_the_request_aborts_every_task_and_closes_every_generator[runner]",
        ),
    ),
    Mutation(
        "fanout-closes-generators",
        "a fan-out left by a cancellation leaves its sub-generators open",
        SA + "_controller.py",
        (("                    branch.gen.close()", "                    pass"),),
        (FAN + "test_cancelling_the_request_aborts_every_task_and_closes_every_generator",),
    ),
    Mutation(
        "fanout-waits-for-room",
        "a task yielded to a full inbox is taken as sent (lost) instead of waiting for room",
        SA + "_controller.py",
        (("            await batch[i][1].send_waiting(branch.jobs[-1])", "            pass"),),
        (FAN + "test_a_full_inbox_makes_the_fan_out_wait_for_room",),
    ),
    Mutation(
        "fanout-streams-stepped",
        "a stream a sub-generator yields runs to its end as one task instead of step by step",
        SA + "_controller.py",
        (
            (
                "            if task.streaming_output_flag or (",
                "            if False and (",
            ),
        ),
        (FAN + "test_a_sub_generator_that_streams_goes_on_in_a_task_of_its_own",),
    ),
    Mutation(
        "plain-generation-starts-without-runner",
        "an engine worker runs every generation in a runner task, even on an engine that starts streams",
        SA + "_engine_worker.py",
        (('start = getattr(type(engine), "start_stream", None)', "start = None"),),
        (SG + "test_a_plain_generation_runs_without_a_task_of_its_own",),
    ),
    Mutation(
        "started-generation-cancel-aborts",
        "cancelling a generation started without a runner does not reach its engine request",
        SA + "_engine_worker.py",
        (("        job.cancel_scope = run\n", "        job.cancel_scope = None\n"),),
        (SG + "test_cancelling_a_started_generation_aborts_it_in_the_engine",),
    ),
    Mutation(
        "started-generation-error-reaches-requester",
        "an error while a started generation's deltas are applied is dropped",
        SA + "_engine_worker.py",
        (
            (
                "            except Exception as exc:  # handed to the requester, never swallowed\n                job.error = exc\n        self.cancel()",
                "            except Exception:\n                pass\n        self.cancel()",
            ),
        ),
        (SG + "test_an_error_while_reading_a_started_generation_fails_its_task",),
    ),
    Mutation(
        "started-generation-cancelled-before-start-skips-engine",
        "a generation cancelled while it waited for a slot is still started in the engine",
        SA + "_engine_worker.py",
        (
            (
                "        if job.cancel_requested:  # cancelled before it began",
                "        if False:  # cancelled before it began",
            ),
        ),
        (SG + "test_a_generation_cancelled_before_it_began_never_reaches_the_engine",),
    ),
    Mutation(
        "actor-close-waits-for-started-generations",
        "a closed actor's serve returns while generations started without a runner still run",
        SA + "_worker.py",
        (
            (
                "            if self._started:  # jobs without a runner",
                "            if False:  # jobs without a runner",
            ),
        ),
        (SG + "test_closing_an_actor_waits_for_its_started_generations",),
    ),
    Mutation(
        "admission-error-fails-the-job",
        "an engine's refusal at a runner-less start leaves the dispatch (slot and running count lost)",
        SA + "_worker.py",
        (
            (
                "            except Exception as exc:  # what its handler would have raised at once",
                "            except ZeroDivisionError as exc:  # what its handler would have raised at once",
            ),
        ),
        (SUB + "test_a_task_refused_at_admission_fails_its_block",),
    ),
    Mutation(
        "submitted-job-counted-before-handover",
        "Parallel.submit counts a job after handing it over: one over at once stays counted for ever",
        SA + "_context.py",
        (
            (
                "        self._handles.append(handle)\n        self._jobs.add(handle)\n        self._running += 1\n        if not actor.submit_nowait(job):\n            self._handles.pop()\n            self._jobs.discard(handle)\n            self._running -= 1\n            return self.start(_run_resolved, ctx, task, actor)\n        return handle",
                "        if not actor.submit_nowait(job):\n            return self.start(_run_resolved, ctx, task, actor)\n        self._handles.append(handle)\n        self._jobs.add(handle)\n        self._running += 1\n        return handle",
            ),
        ),
        (SUB + "test_a_task_refused_at_admission_fails_its_block",),
    ),
    Mutation(
        "finished-handle-cuts-cycles",
        "a submitted task's handle keeps its block and its job once over: each request is left to the collector",
        SA + "_context.py",
        (("        self._par = self._job = None  # type: ignore[assignment]\n", "        pass\n"),),
        (SUB + "test_a_finished_request_is_freed_without_the_collector",),
    ),
    Mutation(
        "finished-fan-out-job-cuts-cycles",
        "a fan-out's job keeps itself, its branch and its fan-out once over: each compat request is left to the collector",
        SA + "_controller.py",
        (
            (
                "            self.done = self.fanout = self.branch = None  # type: ignore[assignment]\n",
                "            pass\n",
            ),
        ),
        (FAN + "test_a_finished_fan_out_is_freed_without_the_collector",),
    ),
    Mutation(
        "alias-never-shadows-a-real-install",
        "the tensorrt_llm alias is installed over a real (importable) tensorrt_llm",
        SA + "compat/_alias.py",
        (("    if real_trtllm_installed():\n        return False\n", ""),),
        (FID + "test_the_alias_never_shadows_a_real_install",),
    ),
    Mutation(
        "compat-results-iterate-as-themselves",
        "iterating a compat result yields outputs instead of the result itself",
        SA + "_result.py",
        (("        if not self.iterates_results:\n", "        if True:\n"),),
        (FID + "test_results_read_as_every_release_reads_them",),
    ),
    Mutation(
        "run-task-starts-the-engine",
        "an engine worker's run_task without a runtime no longer starts its engine",
        SA + "_engine_worker.py",
        (
            (
                "        if self.manage_engine and not self._running:\n",
                "        if False:\n",
            ),
        ),
        (FID + "test_an_engine_worker_runs_a_task_without_a_runtime",),
    ),
    Mutation(
        "kv-hint-posts-at-the-server-root",
        "the attached create_kv_cache_hint posts under /v1 instead of the server's root",
        SA + "compat/_workers.py",
        (('    if root.endswith("/v1"):\n', "    if False:\n"),),
        (FID + "test_openai_worker_attaches_the_kv_cache_hint_to_its_client",),
    ),
    Mutation(
        "kv-hint-refusal-raises",
        "a KV-cache hint the server refuses is reported done",
        SA + "compat/_workers.py",
        (("        if not 200 <= int(status) < 300:\n", "        if False:\n"),),
        (FID + "test_openai_worker_runs_a_drop_through_the_clients_hook",),
    ),
    Mutation(
        "alias-skips-only-what-needs-trtllms-tree",
        "pytest --trtllm-alias no longer skips the tests that need TensorRT-LLM's source tree",
        SA + "testing/_plugin.py",
        (
            (
                "        if top in _TRTLLM_TEST_TREE:\n",
                "        if False:\n",
            ),
        ),
        (FID + "test_pytest_runs_tensorrt_llm_style_tests_through_the_alias",),
    ),
    Mutation(
        "unread-stream-error-raised-on-return",
        "a background stream's error is dropped when its generator returns without stepping it",
        SA + "_controller.py",
        (("                        self._raise_unread_stream_error(tg)\n", ""),),
        ("tests/test_compat.py::test_a_background_streams_error_is_not_lost[returns]",),
    ),
    Mutation(
        "stream-error-raised-on-cancel",
        "a background stream's error is dropped when its generator cancels it",
        SA + "_controller.py",
        (
            (
                "                raise state.error  # it failed before the cancel: not lost to it\n",
                "                pass\n",
            ),
        ),
        ("tests/test_compat.py::test_a_background_streams_error_is_not_lost[cancels]",),
    ),
    Mutation(
        "pool-close-error-not-lost",
        "a replica's close error is dropped at the pool's exit",
        "src/engine_bridge/_scaling/_pool.py",
        (("            self._close_errors.append(exc)\n", "            pass\n"),),
        ("tests/test_pool.py::test_a_replica_that_fails_to_close_is_not_lost",),
    ),
    Mutation(
        "math-verify-error-logged",
        "math-verify raising in the checker child counts as a verdict, silently",
        SA + "methods/_mathcheck.py",
        (("            if isinstance(verdict, dict):  # math-verify raised on this pair\n", "            if False:\n"),),
        ("tests/test_voting.py::test_an_error_of_math_verify_is_logged_not_silent",),
    ),
    Mutation(
        "forgotten-runtime-error-logged",
        "a collected ScaffoldingLlm's loop error is swallowed by its finalizer",
        SA + "_sync.py",
        (("            _log.error(\n", "            (lambda *a, **k: None)(\n"),),
        ("tests/test_runtime.py::test_a_forgotten_sync_runtimes_loop_error_is_logged",),
    ),
    Mutation(
        "hf-stop-cut-cancels-in-the-manager",
        "a stop string cut on our side counts as released: the request runs on in transformers' manager",
        "src/engine_bridge/_engines/_hf.py",
        (
            (
                "            state.stream.push(delta, released=finished)\n",
                "            state.stream.push(delta, released=finished or finish is not None)\n",
            ),
        ),
        (CONF + "test_stop_strings[hf]",),
    ),
    Mutation(
        "http-stop-match-closes-the-stream",
        "a stop string matched on the client goes on reading to the server's end (the server never sees the abort)",
        "src/engine_bridge/_engines/_openai.py",
        (
            (
                "                    return  # a stop string ended it; closing the response aborts it\n",
                "                    continue\n",
            ),
        ),
        ("tests/test_openai_engine.py::test_a_stop_string_matched_here_aborts_the_request_on_the_server",),
    ),
    Mutation(
        "deepconf-online-cancels-in-the-engine",
        "the DeepConf online controller never cancels an unsure trace",
        SA + "compat/contrib/DeepConf/_controllers.py",
        (("                    stream.cancel_flag = True\n", "                    pass\n"),),
        (
            "tests/test_trtllm_fidelity.py::"
            "test_deepconf_online_cancels_a_trace_in_the_engine_once_unsure",
        ),
    ),
    Mutation(
        "deepconf-threshold-from-the-warmup",
        "the online vote's final traces keep the configured threshold, not the warm-up's",
        SA + "compat/contrib/DeepConf/_controllers.py",
        (("            tasks, self.final_sample_num, self.final_generation_controller, bar, kwargs",
          "            tasks, self.final_sample_num, self.final_generation_controller, None, kwargs"),),
        (
            "tests/test_trtllm_fidelity.py::"
            "test_deepconf_votes_set_the_online_threshold_from_the_warmup",
        ),
    ),
    Mutation(
        "deepconf-confidence-needs-logprobs",
        "DeepConf makes up a confidence when the worker returned no logprobs",
        SA + "compat/contrib/DeepConf/_confidence.py",
        (("    if task.output_tokens or task.output_str:\n", "    if False:\n"),),
        ("tests/test_trtllm_fidelity.py::test_deepconf_without_logprobs_fails_the_request",),
    ),
    Mutation(
        "direct-init-validates",
        "the tasks' direct __init__ stores sampling values without validating them",
        SA + "_tasks.py",
        (('            body.append(f"    _v{i}(self, {name!r}, {name})")',
          '            pass'),),
        ("tests/test_tasks.py::test_bad_sampling_value_names_the_field",
         "tests/test_tasks.py::test_the_direct_init_builds_what_the_dataclass_init_builds"),
    ),
    Mutation(
        "direct-init-leaves-sparse-defaults-to-the-class",
        "the tasks' direct __init__ stores every sparse field in the instance dict",
        SA + "_tasks.py",
        (('            body.append(f"    if {name} is not _d{i}: _values[{name!r}] = {name}")',
          '            body.append(f"    _values[{name!r}] = {name}")'),),
        ("tests/test_tasks.py::test_the_direct_init_builds_what_the_dataclass_init_builds",),
    ),
    Mutation(
        "direct-init-subclasses-take-the-dataclass-init",
        "a task subclass's own __setattr__ no longer sees the fields set by __init__",
        SA + "_tasks.py",
        (('        f"    if type(self) is not _cls:\\n"', '        f"    if False:\\n"'),),
        ("tests/test_tasks.py::test_the_direct_init_builds_what_the_dataclass_init_builds",),
    ),
    Mutation(
        "port-run-hf-serves-reward-models",
        "--worker-engine hf builds a generation engine over a reward model's folder",
        SA + "compat/_workers.py",
        (("            if kind is not None:  # a reward model", "            if False:  # a reward model"),),
        ("tests/test_trtllm_fidelity.py::test_port_run_hf_worker_engine_serves_a_reward_model_folder",),
    ),
    Mutation(
        "started-stream-close-aborts-in-the-engine",
        "closing a stream started without a task never tells the engine to drop it",
        "src/engine_bridge/_bridge.py",
        (("        self._abort(stream._key, stream._state)  #", "        pass  #"),),
        (
            "tests/test_trtllm_engine.py::test_closing_a_started_stream_aborts_it_in_the_executor_without_waiting",
            "tests/test_trtllm_engine.py::test_runtime_generations_start_on_the_engine_and_cancel_there",
        ),
    ),
    Mutation(
        "started-stream-abort-deadline",
        "a started stream's lost abort is waited for forever (no abort_timeout deadline)",
        "src/engine_bridge/_bridge.py",
        (("        self._watch(stream._key)\n", "        pass\n"),),
        ("tests/test_trtllm_engine.py::test_a_started_streams_lost_abort_is_loud_after_abort_timeout",),
    ),
    Mutation(
        "started-stream-frees-its-slot",
        "a released started stream keeps its bridged engine slot",
        "src/engine_bridge/_bridge.py",
        (("            del self._live[key]\n            assert self._slots is not None\n            self._slots.release()\n            if stream._closing",
          "            del self._live[key]\n            if stream._closing"),),
        ("tests/test_trtllm_engine.py::test_a_started_stream_is_admitted_at_once_or_not_at_all",),
    ),
    Mutation(
        "started-generation-falls-back-to-a-runner",
        "a generation the engine had no slot for is left without a runner",
        SA + "_engine_worker.py",
        (("        if stream is None:  # no free slot", "        if False:  # no free slot"),),
        ("tests/test_trtllm_engine.py::test_runtime_generations_start_on_the_engine_and_cancel_there",),
    ),
    Mutation(
        "trtllm-alias-names-fastmcp",
        "pytest --trtllm-alias no longer gives mcp 1.x's FastMCP name to mcp 2's MCPServer",
        SA + "testing/_plugin.py",
        (("    _install_fastmcp_name()\n", "    pass\n"),),
        ("tests/test_trtllm_fidelity.py::test_pytest_runs_tensorrt_llm_style_tests_through_the_alias",),
    ),
    Mutation(
        "loop-caller-one-wake-up-per-burst",
        "every callback from an engine thread wakes the event loop once more",
        "src/engine_bridge/_bridge.py",
        (("        if self._scheduled:\n            return True  #", "        if False:\n            return True  #"),),
        ("tests/test_backend.py::test_loop_caller_runs_a_burst_in_order_with_one_wake_up",),
    ),
    Mutation(
        "ray-last-delta-sent",
        "the Ray actor's event stream never sends a request's last delta (held for its end)",
        SRC + "_scaling/_ray.py",
        (("                if items and (finished or not final):", "                if items and not final:"),),
        ("tests/test_ray_engine.py::test_the_actors_event_stream_sends_what_came_while_it_waited_at_a_yield",),
    ),
    Mutation(
        "ray-lost-actor-fails-the-engine",
        "a lost Ray actor's event stream is not noticed: the engine stays healthy and its requests wait",
        SRC + "_scaling/_ray.py",
        (("        except BaseException as exc:\n            caller.call_soon(self._on_failure, exc)\n", "        except BaseException as exc:\n            pass\n"),),
        (RAY,),
    ),
    Mutation(
        "ray-abort-reaches-the-actor",
        "leaving a RayEngine stream early no longer asks the actor to drop the request",
        SRC + "_scaling/_ray.py",
        (("                state.abort_ref = self.actor.abort.remote(str(key))", "                pass"),),
        (RAY,),
    ),

    Mutation(
        "trtllm-samples-share-sampling-params",
        "every request gets a TensorRT-LLM SamplingParams of its own (1.5 KB each in flight)",
        SRC + "_engines/_trtllm.py",
        (("        params = self._shared_params.get(request.params)\n", "        params = None\n"),),
        (TRT + "test_samples_that_sample_alike_share_one_sampling_params",),
    ),

    Mutation(
        "simulated-holds-a-group-until-its-prefill",
        "the simulated engine admits a prefix group's members as they come (no gate)",
        SRC + "_engines/_simulated.py",
        (
            (
                "        if group is not None and self.prefix_cache_blocks and r.prompt_tokens > self.block_size:\n",
                "        if False:\n",
            ),
        ),
        (
            PG + "test_a_group_computes_its_prompt_once",
            PG + "test_members_wait_for_the_leaders_prefill",
        ),
    ),
    Mutation(
        "bridged-holds-a-group-until-its-prefill",
        "a bridged engine (transformers, TensorRT-LLM) submits a group's members as they come",
        SRC + "_bridge.py",
        (
            (
                "        if group is None or not self._share_prefixes or not self._sharable(state):\n",
                "        if True:\n",
            ),
        ),
        (
            TRT + "test_a_prefix_group_reuses_its_leaders_blocks_in_the_executor",
            "tests/test_hf_engine.py::test_a_prefix_group_is_prefilled_once_in_transformers",
        ),
    ),
    Mutation(
        "a-held-member-leaves-without-the-engine",
        "a held group member that is cancelled stays queued and reaches the engine later",
        SRC + "_prefix.py",
        (("                g.held.remove(item)\n", "                g.held.index(item)\n"),),
        (PG + "test_a_held_member_cancelled_never_reaches_the_engine",),
    ),
    Mutation(
        "a-leader-gone-hands-over",
        "a leader cancelled before its prefill leaves its group's others held for ever",
        SRC + "_prefix.py",
        (
            (
                "            if g.held:  # the prefix is not computed yet: the next member leads\n",
                "            if False:\n",
            ),
        ),
        (PG + "test_a_leader_cancelled_before_its_prefill_hands_over",),
    ),
    Mutation(
        "vote-samples-are-one-group",
        "a majority vote's samples are submitted without a prefix group",
        SA + "methods/_majority_vote.py",
        (("        base = grouped(task, n)\n", "        base = task\n"),),
        (PG + "test_a_majority_vote_is_one_group",),
    ),
    Mutation(
        "tree-children-are-one-group",
        "a tree node's children are submitted without a prefix group",
        SA + "methods/_tree_search.py",
        (("            t.prefix_group = group\n", "            pass\n"),),
        (PG + "test_a_tree_node_s_children_are_one_group",),
    ),
    Mutation(
        "group-leader-streams-from-the-executor",
        "a TensorRT-LLM group leader asked for without streaming is not streamed from the "
        "executor (its others wait for its end)",
        SRC + "_engines/_trtllm.py",
        (
            (
                "                prompt, sampling_params=params, streaming=state.request.stream or leads\n",
                "                prompt, sampling_params=params, streaming=state.request.stream\n",
            ),
        ),
        (TRT + "test_a_prefix_group_reuses_its_leaders_blocks_in_the_executor",),
    ),    Mutation(
        "http-holds-a-group-until-its-first-chunk",
        "OpenAIEngine sends a prefix group's members as they come",
        SRC + "_engines/_openai.py",
        (
            (
                "        group = request.group if self.share_prefixes else None\n",
                "        group = None\n",
            ),
        ),
        (PG + "test_an_http_member_held_then_cancelled_is_never_sent",),
    ),
    Mutation(
        "http-held-member-finds-the-engine-closed",
        "an OpenAIEngine request let go after its engine closed uses the closed client",
        SRC + "_engines/_openai.py",
        (
            (
                "            if not self._clients:  # closed while this one waited (for a slot, or its group)\n",
                "            if False:\n",
            ),
        ),
        (PG + "test_an_http_member_held_when_the_engine_closes_finds_it_closed",),
    ),
    Mutation(
        "cut-samples-do-not-vote",
        "a sample cut by max_tokens votes with whatever its cut text ends in",
        SA + "methods/_majority_vote.py",
        (
            (
                '                    out.finish_reason != "length" or cut_answer(out.output_str) is not None\n',
                "                    True\n",
            ),
        ),
        ("tests/test_voting.py::test_a_cut_sample_does_not_vote",),
    ),
    Mutation(
        "the-instruction-follows-the-question",
        "a Sampler's instruction callable is never given the question (no instruction added)",
        SA + "methods/_sampler.py",
        (
            (
                "            instruction = instruction(question_text(t.input_str, t.messages))\n",
                "            instruction = None\n",
            ),
        ),
        (
            "tests/test_instructions.py::test_one_sampler_picks_the_instruction_for_each_request",
            "tests/test_instructions.py::test_the_step_by_step_methods_ask_a_fact_for_a_sentence",
        ),
    ),
    Mutation(
        "step-by-step-methods-ask-a-fact-for-a-sentence",
        "the methods built for run, bench and serve ask every question step by step",
        SA + "cli/_registry.py",
        (
            (
                "            ByQuestionKind(COT, PLAIN) if spec.default_instruction == COT else spec.default_instruction\n",
                "            spec.default_instruction\n",
            ),
        ),
        ("tests/test_instructions.py::test_the_step_by_step_methods_ask_a_fact_for_a_sentence",),
    ),
    Mutation(
        "serve-freezes-what-is-alive-at-start",
        "scaffold serve leaves an engine's model and libraries in the collector's walks",
        SA + "cli/_serve.py",
        (("        gc.freeze()\n", "        pass\n"),),
        ("tests/test_serve.py::test_the_server_freezes_what_is_alive_once_its_engine_is_up",),
    ),
    Mutation(
        "groups-released-when-the-leaders-prompt-is-in-a-batch",
        "a prefix group's members wait for the leader's first token (a step later)",
        SRC + "_engines/_hf.py",
        (("        scheduler.schedule_batch = scheduled\n", "        pass\n"),),
        (
            "tests/test_hf_engine.py::test_a_group_is_released_when_a_batch_holds_its_leaders_whole_prompt",
        ),
    ),
    Mutation(
        "hf-decodes-in-the-bridge-thread",
        "transformers' outputs are decoded in the event loop, as before",
        SRC + "_engines/_hf.py",
        (
            (
                "        text = self.tokenizer.decode(tokens, skip_special_tokens=True) if delivered else None\n",
                "        text = \"\" if delivered else None\n",
            ),
            (
                "        state.n_tokens = len(tokens)\n        finish: str | None = None\n",
                "        state.n_tokens = len(tokens)\n"
                "        text = self.tokenizer.decode(tokens, skip_special_tokens=True)\n"
                "        finish: str | None = None\n",
            ),
        ),
        (
            "tests/test_hf_engine.py::test_outputs_are_decoded_off_the_event_loop_and_progress_stays_there",
        ),
    ),
    Mutation(
        "hf-tokenizer-settled-before-decoding-beside-it",
        "the engine starts without settling the tokenizer's padding and truncation: a first "
        "encoding may write to it while the bridge thread decodes",
        SRC + "_engines/_hf.py",
        (("        self._settle_tokenizer()\n", ""),),
        (
            "tests/test_hf_engine.py::test_outputs_are_decoded_off_the_event_loop_and_progress_stays_there",
        ),
    ),
    Mutation(
        "hf-progress-nobody-reads-stays-in-the-bridge-thread",
        "every output transformers streams reaches the event loop",
        SRC + "_engines/_hf.py",
        (
            (
                "        if not delivered and state.stream._leads is None:\n",
                "        if False:\n",
            ),
        ),
        (
            "tests/test_hf_engine.py::test_outputs_are_decoded_off_the_event_loop_and_progress_stays_there",
        ),
    ),
    Mutation(
        "best-of-n-prefers-a-whole-candidate",
        "best-of-n chooses by score alone: a candidate cut before its answer can win",
        SA + "methods/_best_of_n.py",
        (
            (
                "        best_score, best = max(whole or scored, key=lambda pair: pair[0])\n",
                "        best_score, best = max(scored, key=lambda pair: pair[0])\n",
            ),
        ),
        (
            "tests/test_best_of_n.py::test_a_candidate_cut_before_its_answer_is_chosen_only_when_all_were",
        ),
    ),
]


def _failed_by_assertion(report: Path) -> list[str]:
    """The tests of a JUnit report that failed (a ``<failure>``: the test body
    raised), as opposed to those that errored (collection, import, fixture)."""
    if not report.exists():
        return []
    root = ElementTree.parse(report).getroot()
    return [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None
    ]


def run(m: Mutation, timeout: float) -> dict[str, object]:
    path = ROOT / m.path
    original = path.read_text()
    mutant = original
    for old, new in m.edits:
        if mutant.count(old) != 1:
            return {"verdict": "stale", "why": f"{old[:60]!r} occurs {mutant.count(old)} times"}
        mutant = mutant.replace(old, new)
    start = time.monotonic()
    report = Path(tempfile.mkdtemp(prefix="mutation-")) / "junit.xml"
    try:
        path.write_text(mutant)
        proc = subprocess.run(
            [
                # -m "": the named tests run, the slow ones too (pyproject's addopts)
                sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "",
                f"--junitxml={report}", *m.tests,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout else []
        failed = _failed_by_assertion(report)
        if proc.returncode == 0:
            verdict = "survived"
        elif failed:
            verdict = "killed"
            tail = [*tail, f"failed: {', '.join(failed)}"]
        else:
            # an import, collection or fixture error is no verdict on the mutant
            verdict = "error"
    except subprocess.TimeoutExpired:
        verdict, tail = "killed", [f"tests ran past {timeout} s"]
    finally:
        path.write_text(original)
        shutil.rmtree(report.parent, ignore_errors=True)
    return {"verdict": verdict, "seconds": round(time.monotonic() - start, 1), "tests": tail}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutation")
    args = parser.parse_args()
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.what}\n    {m.path}; killed by {', '.join(m.tests)}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(unknown)}")
    chosen = [known[n] for n in args.names] if args.names else MUTATIONS
    results = {}
    for m in chosen:
        results[m.name] = run(m, args.timeout)
        print(f"{m.name}: {results[m.name]['verdict']}", file=sys.stderr)
    bad = [n for n, r in results.items() if r["verdict"] != "killed"]
    print(json.dumps({"mutations": results, "not_killed": bad}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
