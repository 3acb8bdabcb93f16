"""OpenAIBackend against a real OpenAI-compatible server: `transformers serve` on a tiny local model.

The served model is the scripted one of test_backends (every chat gets "Computing." and one
`<tool_call>`), so texts, tool calls and token counts are known exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fcdpo.backends import BackendError, Completion, HFBackend, OpenAIBackend
from tests.test_backends import CHATS, MULTIPLY_SCHEMA, PAYLOAD, SCRIPT_TEXT, build_scripted_model

pytestmark = pytest.mark.slow  # starts a real server (seconds) before the first test

TRANSFORMERS_CLI = Path(sys.executable).with_name("transformers")
STARTUP_LIMIT_S = 45
MULTIPLY_CALL = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base_url, model folder, script token ids) of a running `transformers serve`; stopped afterwards."""
    folder = tmp_path_factory.mktemp("served")
    script = build_scripted_model(folder)
    port = free_port()
    log_path = folder / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [str(TRANSFORMERS_CLI), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", "--continuous-batching",
               # A small paged KV cache: sized by default, its set-up makes the first request take ~10 s on CPU.
               "--cb-num-blocks", "64", "--cb-max-batch-tokens", "1024"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not ready after {STARTUP_LIMIT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}/v1", folder, script
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def backend_for(served, **options) -> OpenAIBackend:
    url, folder, _ = served
    backend = OpenAIBackend(str(folder), url, **{"backoff": 0.01, "max_retries": 2, "timeout": 30, **options})
    backend.slept = []
    backend.sleep = backend.slept.append
    return backend


def test_many_chats_in_flight_come_back_in_order_with_native_tool_calls(served):
    _, folder, script = served
    chats = CHATS * 2
    completions = backend_for(served, max_concurrency=4).complete(chats, tools=[MULTIPLY_SCHEMA], max_new_tokens=40)
    local = HFBackend(folder)
    # Prompt lengths differ from chat to chat, so equal counts mean the order was kept.
    assert [c.prompt_tokens for c in completions] == [len(local.encode(c, [MULTIPLY_SCHEMA])) for c in chats]
    assert completions[0] == Completion(SCRIPT_TEXT, [MULTIPLY_CALL], completions[0].prompt_tokens, len(script), "stop")
    assert all(c.text == SCRIPT_TEXT and c.tool_calls == [MULTIPLY_CALL] for c in completions)


def test_without_native_tools_the_call_comes_back_as_text(served):
    [completion] = backend_for(served, native_tools=False).complete([CHATS[1]], tools=[MULTIPLY_SCHEMA])
    assert completion.tool_calls is None
    assert completion.text == f"{SCRIPT_TEXT}\n<tool_call>\n{PAYLOAD}\n</tool_call>"
    assert completion.prompt_tokens == len(HFBackend(served[1]).encode(CHATS[1]))  # tools were not sent


def test_a_chain_with_tool_results_is_accepted_and_cut_at_max_new_tokens(served):
    chain = CHATS[0] + [
        {"role": "assistant", "content": "", "tool_calls": [MULTIPLY_CALL]},
        {"role": "tool", "name": "multiply", "content": "12"},
    ]
    [completion] = backend_for(served).complete([chain], tools=[MULTIPLY_SCHEMA], max_new_tokens=2)
    assert (completion.finish_reason, completion.completion_tokens, completion.tool_calls) == ("length", 2, None)
    assert SCRIPT_TEXT.startswith(completion.text) and completion.text


def test_a_model_the_server_does_not_serve_is_a_backend_error_without_retries(served):
    url = served[0]
    backend = OpenAIBackend("no-such-model", url, backoff=0.01)
    backend.slept = []
    backend.sleep = backend.slept.append
    started = time.perf_counter()
    expected = r"\(model 'no-such-model'\) refused the request: HTTP 400: Server is pinned"
    with pytest.raises(BackendError, match=expected):
        backend.complete([CHATS[0]])
    assert time.perf_counter() - started < 5 and backend.slept == []


def test_a_server_error_is_retried_then_reported(served):
    # A turn whose content is a number passes the server's request checks and then fails in its chat
    # template (HTTP 500). (A retry may also meet a reset connection: the server closes the connection
    # of a request that failed.) Malformed JSON arguments were the 500 here until transformers 5.25,
    # which answers them with a 400, not retried (test_a_bad_request_is_not_retried covers that).
    chain = CHATS[0][:-1] + [{"role": "user", "content": 5}]
    backend = backend_for(served)
    with pytest.raises(BackendError, match=r"failed 3 attempt\(s\): HTTP 500"):
        backend.complete([chain])
    assert backend.slept == [0.01, 0.02]


def test_a_request_that_times_out_is_retried_then_reported(served):
    backend = backend_for(served, timeout=0.001)
    started = time.perf_counter()
    with pytest.raises(BackendError, match=r"failed 3 attempt\(s\): no answer within 0.001 s \(3×\)$"):
        backend.complete([CHATS[0]], max_new_tokens=40)
    assert time.perf_counter() - started < 5 and backend.slept == [0.01, 0.02]
