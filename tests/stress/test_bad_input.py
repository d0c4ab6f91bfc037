"""Property-based bad input: every case gets a clear error, nothing crashes, and
the runtime or server keeps serving."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_bridge import InvalidRequestError, SimulatedEngine
from scaffold_actors import EngineWorker, GenerationTask, InvalidTaskError, ScaffoldingLlm
from scaffold_actors.methods import MajorityVote, Sampler

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
FIELDS = ["max_tokens", "temperature", "top_p", "top_k", "seed", "num_logprobs"]


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FIELDS), value=ANY_VALUE)
def test_sampling_values_are_accepted_or_rejected_by_name(field: str, value: Any) -> None:
    try:
        task = GenerationTask(input_str="q", **{field: value})
    except InvalidTaskError as e:
        assert field in str(e)
        return
    got = getattr(task, field)
    assert got is None or (isinstance(got, (int, float)) and not isinstance(got, bool))
    if isinstance(got, float):
        assert math.isfinite(got)


@pytest.fixture(scope="module")
def llm() -> Iterator[ScaffoldingLlm]:
    engine = SimulatedEngine(max_context=256)
    with ScaffoldingLlm(
        MajorityVote(Sampler(max_tokens=8), samples=2), {"generation": EngineWorker(engine)}
    ) as runtime:
        yield runtime


PROMPTS = st.one_of(
    st.text(max_size=50),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20).map(lambda s: s * 200),
    st.text(alphabet=st.characters(blacklist_categories=()), max_size=10),  # lone surrogates too
    st.lists(
        st.dictionaries(st.sampled_from(["role", "content", "name"]), ANY_VALUE, max_size=3),
        max_size=3,
    ),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=20)}
        ),
        min_size=1,
        max_size=3,
    ),
    ANY_VALUE,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=PROMPTS)
def test_any_prompt_gets_a_result_or_a_clear_error(llm: ScaffoldingLlm, prompt: Any) -> None:
    try:
        result = llm.generate(prompt)
    except (InvalidTaskError, InvalidRequestError, TypeError) as e:
        assert str(e)  # says what is wrong
    else:  # one result, or a batch of them for a list of prompts
        for r in result if isinstance(result, list) else [result]:
            assert r.output is not None
    ok = llm.generate("What is 1 + 1?")  # still serving
    assert ok.output is not None and ok.output.output_str


JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
BODY_KEYS = ["model", "messages", "prompt", "max_tokens", "temperature", "samples", "stream", "n"]
BODIES = st.one_of(
    JSON,
    st.dictionaries(st.sampled_from(BODY_KEYS), JSON, max_size=6),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["cot", "majority-vote", "nope"]), "messages": JSON},
        optional={"max_tokens": JSON, "temperature": JSON, "samples": JSON, "n": JSON},
    ),
)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from scaffold_actors.cli import build_method, create_app

    methods = {
        m: build_method(m, samples=2, max_tokens=8, temperature=0.7)
        for m in ("cot", "majority-vote")
    }
    app = create_app(
        methods,
        {"generation": EngineWorker(SimulatedEngine(max_context=256))},
        max_body_bytes=10_000,
    )
    with TestClient(app) as c:
        yield c


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=BODIES, chat=st.booleans())
def test_server_bodies_get_a_clear_answer(client: Any, body: Any, chat: bool) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    r = client.post(path, json=body)
    assert r.status_code in (200, 400, 404, 413), r.text
    if r.status_code != 200:
        error = r.json()["error"]
        assert error["message"] and error["type"]


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200))
def test_server_raw_bytes(client: Any, raw: bytes) -> None:
    r = client.post("/v1/completions", content=raw)
    assert r.status_code in (200, 400, 404)
    assert client.get("/health").json()["status"] == "ok"
