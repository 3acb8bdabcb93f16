"""Fault injection: OpenAIBackend against a real HTTP server on 127.0.0.1 that misbehaves.

Every way a server can answer badly — a broken 200, an HTTP error, a dropped, reset or refused
connection, silence, an answer dripped a byte at a time, an answer too long — must end in a completion
(after retries) or a `BackendError` that says what happened, after a bounded number of requests and
within a bounded time. Nothing else may come out of `complete`: no `AttributeError`, `TypeError`,
`ValueError`, and no call that does not return.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fcdpo.backends import BackendError, Completion, OpenAIBackend

HANG_LIMIT_S = 30  # a call still running after this long is reported as a hang
TIMEOUT_S = 0.4  # each attempt's deadline in these tests
CHAT = [{"role": "user", "content": "What is 3 times 4?"}]


def completion_body(content="Final answer: 12", tool_calls=None, usage="default", finish_reason="stop") -> dict:
    body = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content, "tool_calls": tool_calls}}]}
    body["usage"] = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13} if usage == "default" else usage
    return body


GOOD = json.dumps(completion_body()).encode()


class FaultServer:
    """A threaded HTTP server whose every answer is `behave(handler, index)`; records request bodies."""

    def __init__(self, behave):
        self.behave = behave
        self.requests: list[bytes] = []
        self.peers: list[tuple] = []  # each request's client address: one per connection
        self.paths: list[str] = []  # each request's target, as the request line gave it
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_ref = server

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                index = len(server.requests)
                server.requests.append(body)
                server.peers.append(self.client_address)
                server.paths.append(self.path)
                try:
                    server.behave(self, index)
                except OSError:  # the client hung up on a misbehaving answer, as it should
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- ways to answer


def send(status=200, body=GOOD, headers=None, content_type="application/json"):
    def behave(handler, index):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)
    return behave


def send_json(payload, status=200, headers=None):
    return send(status, json.dumps(payload).encode(), headers)


def raw(data: bytes):
    """Write `data` as the whole answer, then close the connection."""
    def behave(handler, index):
        handler.wfile.write(data)
        handler.wfile.flush()
        handler.close_connection = True
    return behave


def drip(data: bytes, interval: float = 0.05):
    """Send `data` one byte at a time: each read finds a byte, only the whole answer is late."""
    def behave(handler, index):
        for byte in data:
            if handler.server_ref.stop.wait(interval):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
    return behave


def silence(handler, index):
    """Read the request and never answer (until the test ends)."""
    handler.server_ref.stop.wait(HANG_LIMIT_S)


def reset(handler, index):
    """Close the connection with a TCP reset instead of an answer."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()


def sequence(*behaviours):
    """The i-th request gets the i-th behaviour; later ones get the last."""
    return lambda handler, index: behaviours[min(index, len(behaviours) - 1)](handler, index)


def keep_alive(body=GOOD):
    """A good answer over HTTP/1.1 that leaves the connection open for the next request."""
    def behave(handler, index):
        handler.protocol_version = "HTTP/1.1"
        send(body=body)(handler, index)
        handler.close_connection = False
    return behave


def chunked(parts: list[bytes]):
    def behave(handler, index):
        handler.protocol_version = "HTTP/1.1"
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for part in parts:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        handler.wfile.write(b"0\r\n\r\n")
        handler.close_connection = True
    return behave


# --------------------------------------------------------------------------- harness


@pytest.fixture
def serve():
    servers = []

    def start(behave):
        server = FaultServer(behave)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def backend_for(url: str, **options) -> OpenAIBackend:
    backend = OpenAIBackend("m", url, **{"backoff": 0.01, "max_retries": 2, "timeout": TIMEOUT_S, **options})
    backend.slept = []
    backend.sleep = backend.slept.append
    return backend


def outcome(backend: OpenAIBackend, chats=(CHAT,), **kwargs) -> Completion | BackendError:
    """What `complete` gave for the first chat: a Completion or the BackendError it raised.

    Any other exception fails the test (a crash); a call still running after `HANG_LIMIT_S` fails it
    as a hang.
    """
    result: dict = {}

    def call():
        try:
            result["value"] = backend.complete(list(chats), **kwargs)[0]
        except BackendError as exc:
            result["value"] = exc
        except BaseException as exc:  # noqa: BLE001 - reported below as a crash
            result["crash"] = exc

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(HANG_LIMIT_S)
    assert not worker.is_alive(), f"complete() hung for more than {HANG_LIMIT_S} s"
    if "crash" in result:
        raise AssertionError(f"complete() crashed with {result['crash']!r}") from result["crash"]
    return result["value"]


def assert_retried_then_failed(server, backend, *fragments):
    """The request was tried 1 + max_retries times and ended in a BackendError naming the fault."""
    result = outcome(backend)
    assert isinstance(result, BackendError), f"expected a BackendError, got {result!r}"
    message = str(result)
    assert f"failed {backend.max_retries + 1} attempt(s)" in message and backend.base_url in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert len(server.requests) == backend.max_retries + 1
    assert backend.slept == backend.retry_delays


# --------------------------------------------------------------------------- 200 answers that are not chat completions

MALFORMED_200 = {
    "truncated JSON": (send(body=GOOD[: len(GOOD) // 2]), "not JSON"),
    "HTML body": (send(body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"), "not JSON"),
    "empty body": (send(body=b""), "not JSON"),
    "invalid UTF-8": (send(body=b'{"choices": "\xff\xfe"}'), "not JSON"),
    "JSON list": (send_json([completion_body()]), "a JSON array, not an object"),
    "JSON string": (send_json("ok"), "a JSON string, not an object"),
    "JSON null": (send(body=b"null"), "a JSON null, not an object"),
    "NaN": (send(body=GOOD.replace(b'"prompt_tokens": 9', b'"prompt_tokens": NaN')), "not JSON"),
    "huge integer in usage": (send(body=GOOD.replace(b'"prompt_tokens": 9', b'"prompt_tokens": ' + b"9" * 5000)),
                              "not JSON"),
    "nesting too deep": (send(body=b"[" * 100_000 + b"]" * 100_000), "not JSON"),
    "no choices": (send_json({**completion_body(), "choices": []}), "no choices"),
    "choices null": (send_json({**completion_body(), "choices": None}), "no choices"),
    "choice a string": (send_json({**completion_body(), "choices": ["hi"]}), "choices[0] is a JSON string"),
    "message null": (send_json({"choices": [{"index": 0, "message": None}]}), "choices[0].message is a JSON null"),
    "message missing": (send_json({"choices": [{"index": 0}]}), "choices[0].message is a JSON null"),
    "content a number": (send_json(completion_body(content=12)), "message.content is a JSON number"),
    "content parts not text": (send_json(completion_body(content=[{"type": "image", "text": 3}])), "not a text part"),
    "tool_calls an object": (send_json(completion_body(tool_calls={"name": "f"})), "message.tool_calls is a JSON object"),
    "tool call null": (send_json(completion_body(tool_calls=[None])), "message.tool_calls[0] is a JSON null"),
    "function null": (send_json(completion_body(tool_calls=[{"type": "function", "function": None}])),
                      "message.tool_calls[0].function is a JSON null"),
    "function name null": (send_json(completion_body(tool_calls=[{"function": {"name": None, "arguments": "{}"}}])),
                           "function.name is a JSON null"),
    "arguments a list": (send_json(completion_body(tool_calls=[{"function": {"name": "f", "arguments": [1]}}])),
                         "function.arguments is a JSON array"),
    "usage a string": (send_json(completion_body(usage="lots")), "usage is a JSON string"),
    "an error in a 200": (send_json({"error": {"message": "overloaded"}}), "the answer is an error: overloaded"),
}


@pytest.mark.parametrize("case", list(MALFORMED_200))
def test_a_200_that_is_not_a_chat_completion_is_retried_then_a_backend_error(serve, case):
    behave, fragment = MALFORMED_200[case]
    server = serve(behave)
    assert_retried_then_failed(server, backend_for(server.url), "HTTP 200 but", fragment)


@pytest.mark.parametrize("case", ["truncated JSON", "message null", "function null", "JSON list"])
def test_a_malformed_200_followed_by_a_good_one_gives_the_completion(serve, case):
    server = serve(sequence(MALFORMED_200[case][0], send()))
    backend = backend_for(server.url)
    assert outcome(backend) == Completion("Final answer: 12", None, 9, 4, "stop")
    assert len(server.requests) == 2 and backend.slept == [0.01]


# --------------------------------------------------------------------------- odd but valid 200 answers


def test_null_usage_fields_count_as_zero(serve):
    for usage in (None, {"prompt_tokens": None, "completion_tokens": None}, {"prompt_tokens": -3, "completion_tokens": 2.5},
                  {"prompt_tokens": True}, {}):
        server = serve(send_json(completion_body(usage=usage)))
        result = outcome(backend_for(server.url))
        assert isinstance(result, Completion) and result.text == "Final answer: 12", (usage, result)
        assert result.prompt_tokens == 0 and result.completion_tokens in (0, 2), (usage, result)


def test_tool_arguments_holding_a_huge_integer_are_kept_as_the_servers_string(serve):
    arguments = '{"a": ' + "7" * 5000 + ', "b": 1}'
    server = serve(send_json(completion_body(None, [{"id": "x", "type": "function",
                                                     "function": {"name": "multiply", "arguments": arguments}}])))
    result = outcome(backend_for(server.url))
    assert result.tool_calls == [{"type": "function", "function": {"name": "multiply", "arguments": arguments}}]


def test_content_parts_null_arguments_and_a_chunked_answer_are_read(serve):
    body = completion_body([{"type": "text", "text": "Final "}, {"type": "text", "text": "answer: 12"}],
                           [{"function": {"name": "f", "arguments": None}}])
    data = json.dumps(body).encode()
    server = serve(chunked([data[:10], data[10:200], data[200:]]))
    result = outcome(backend_for(server.url))
    assert result == Completion("Final answer: 12", [{"type": "function", "function": {"name": "f", "arguments": {}}}],
                                9, 4, "stop")


def test_lone_surrogates_from_the_server_become_replacement_characters(serve):
    body = json.dumps(completion_body("a\\ud800b", [{"function": {"name": "f", "arguments": '{"x": "\\udfff"}'}}]))
    server = serve(send(body=body.replace("\\\\u", "\\u").encode()))
    result = outcome(backend_for(server.url))
    assert result.text == "a\ufffdb" and result.tool_calls[0]["function"]["arguments"] == {"x": "\ufffd"}
    json.dumps(result.tool_calls, ensure_ascii=False).encode("utf-8")  # storable as UTF-8


def test_a_chat_holding_lone_surrogates_is_sent_as_valid_utf8(serve):
    server = serve(send())
    chat = [{"role": "user", "content": "x\ud800y"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"k": "\udc00"}}}]},
            {"role": "tool", "name": "f", "content": "1"}]
    assert isinstance(outcome(backend_for(server.url), chats=[chat]), Completion)
    sent = json.loads(server.requests[0].decode("utf-8"))
    assert sent["messages"][0]["content"] == "x\ufffdy"
    assert json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"k": "\ufffd"}


# --------------------------------------------------------------------------- HTTP errors, Retry-After, size


def test_server_errors_and_rate_limits_are_retried_then_reported(serve):
    for status in (500, 502, 503, 429, 408):
        server = serve(send_json({"error": {"message": "busy"}}, status=status))
        assert_retried_then_failed(server, backend_for(server.url), f"HTTP {status}: busy (3×)")


def test_an_html_error_page_is_quoted_briefly(serve):
    server = serve(send(502, b"<html>" + b"x" * 10_000 + b"</html>", content_type="text/html"))
    result = outcome(backend_for(server.url, max_retries=0))
    assert isinstance(result, BackendError) and "HTTP 502: <html>xxx" in str(result) and len(str(result)) < 1000


def test_retry_after_in_seconds_is_honoured(serve):
    server = serve(sequence(send_json({"error": "slow down"}, 429, {"Retry-After": "0.3"}),
                            send_json({"error": "busy"}, 503, {"Retry-After": "0"}), send()))
    backend = backend_for(server.url, backoff=0.01)
    assert isinstance(outcome(backend), Completion)
    assert backend.slept == [0.3, 0.02]  # the longer of the server's wait and the backoff


def test_retry_after_as_an_http_date_is_honoured(serve):
    from email.utils import formatdate

    server = serve(sequence(send_json({"error": "slow down"}, 429, {"Retry-After": formatdate(time.time() + 20, usegmt=True)}),
                            send()))
    backend = backend_for(server.url)
    assert isinstance(outcome(backend), Completion)
    assert 15 < backend.slept[0] <= 20


def test_unreadable_retry_after_falls_back_to_the_backoff(serve):
    server = serve(sequence(send_json({"error": "x"}, 503, {"Retry-After": "soon"}), send()))
    backend = backend_for(server.url)
    assert isinstance(outcome(backend), Completion) and backend.slept == [0.01]


def test_a_retry_after_longer_than_the_backend_waits_is_a_backend_error_at_once(serve):
    server = serve(send_json({"error": "quota"}, 429, {"Retry-After": "86400"}))
    backend = backend_for(server.url)
    result = outcome(backend)
    assert isinstance(result, BackendError) and "asked to be retried after 86400 s" in str(result)
    assert len(server.requests) == 1 and backend.slept == []


def test_an_answer_longer_than_the_bound_is_not_read(serve):
    big = json.dumps(completion_body("x" * 5000)).encode()
    server = serve(send(body=big))
    assert_retried_then_failed(server, backend_for(server.url, max_response_bytes=1000),
                               f"an answer of {len(big)} bytes, more than the 1000 accepted")
    server = serve(raw(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + big))  # no length given
    assert_retried_then_failed(server, backend_for(server.url, max_response_bytes=1000),
                               "an answer longer than the 1000 bytes accepted")


def test_a_bad_request_is_not_retried(serve):
    server = serve(send(400, b"not json at all"))
    backend = backend_for(server.url)
    result = outcome(backend)
    assert isinstance(result, BackendError) and "refused the request: HTTP 400: not json at all" in str(result)
    assert len(server.requests) == 1 and backend.slept == []


# --------------------------------------------------------------------------- connections


def test_a_body_cut_short_is_retried_then_reported(serve):
    server = serve(raw(b"HTTP/1.0 200 OK\r\nContent-Length: 5000\r\n\r\n" + GOOD[:40]))
    assert_retried_then_failed(server, backend_for(server.url), "connection failed (RemoteProtocolError: peer closed connection")


def test_garbage_instead_of_http_is_retried_then_reported(serve):
    server = serve(raw(b"SSH-2.0-OpenSSH_9.6\r\n"))
    assert_retried_then_failed(server, backend_for(server.url), "connection failed")


def test_a_connection_closed_without_an_answer_is_retried_then_reported(serve):
    server = serve(raw(b""))
    assert_retried_then_failed(server, backend_for(server.url), "connection failed (RemoteProtocolError: Server disconnected")


def test_a_reset_connection_is_retried_then_reported(serve):
    server = serve(reset)
    assert_retried_then_failed(server, backend_for(server.url), "connection failed")


def test_a_reset_then_a_good_answer_gives_the_completion(serve):
    server = serve(sequence(reset, send()))
    assert isinstance(outcome(backend_for(server.url)), Completion) and len(server.requests) == 2


def test_a_refused_connection_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = backend_for(f"http://127.0.0.1:{port}/v1")
    result = outcome(backend)
    assert isinstance(result, BackendError) and "failed 3 attempt(s): connection failed (ConnectionRefusedError" in str(result)
    assert backend.slept == backend.retry_delays


@pytest.mark.slow
def test_a_server_that_reads_the_request_and_stays_silent_times_out(serve):
    server = serve(silence)
    assert_retried_then_failed(server, backend_for(server.url), f"no answer within {TIMEOUT_S} s (3×)")


@pytest.mark.slow
def test_an_answer_dripped_a_byte_at_a_time_is_cut_off_at_the_deadline(serve):
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(GOOD), GOOD)
    server = serve(drip(answer))  # headers and body alike arrive slowly
    assert_retried_then_failed(server, backend_for(server.url), f"no answer within {TIMEOUT_S} s (3×)")


@pytest.mark.slow
def test_a_body_dripped_after_prompt_headers_is_cut_off_at_the_deadline(serve):
    def behave(handler, index):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(GOOD)))
        handler.end_headers()
        handler.wfile.flush()
        drip(GOOD)(handler, index)

    server = serve(behave)
    assert_retried_then_failed(server, backend_for(server.url), f"no answer within {TIMEOUT_S} s (3×)")


def test_headers_dripped_on_a_reused_connection_are_cut_off_at_the_deadline(serve):
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(GOOD), GOOD)
    server = serve(sequence(keep_alive(), drip(answer)))
    backend = backend_for(server.url, max_retries=0)
    assert isinstance(outcome(backend), Completion)
    result = outcome(backend)
    assert isinstance(result, BackendError) and f"no answer within {TIMEOUT_S} s (1×)" in str(result)
    assert len(server.peers) == 2 and server.peers[0] == server.peers[1]  # the second request reused the connection


def test_the_proxy_the_environment_names_is_used(serve, monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = serve(send())
    monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
    assert isinstance(outcome(backend_for("http://model-server.invalid/v1")), Completion)
    assert proxy.paths == ["http://model-server.invalid/v1/chat/completions"]


@pytest.mark.slow
def test_a_proxy_that_drips_the_answer_is_cut_off_at_the_deadline(serve, monkeypatch):
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(GOOD), GOOD)
    proxy = serve(drip(answer))
    monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
    assert_retried_then_failed(proxy, backend_for("http://model-server.invalid/v1"), f"no answer within {TIMEOUT_S} s (3×)")


@pytest.mark.slow
def test_a_listener_that_never_accepts_times_out():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        backend = backend_for(f"http://127.0.0.1:{listener.getsockname()[1]}/v1")
        result = outcome(backend)
    assert isinstance(result, BackendError) and f"no answer within {TIMEOUT_S} s (3×)" in str(result)


def test_many_chats_against_a_flaky_server_all_complete_in_order(serve):
    # Every third chat's first two attempts fail, each in another way; its retries get it through.
    # Faults go by chat, not by the server's request count: with 4 chats in flight, a count shared by all
    # of them could land one chat's every attempt on a fault.
    faults = [reset, send(body=b"<html>"), send_json({"choices": [{"message": None}]}), send(503, b"{}")]
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def behave(handler, index):
        question = json.loads(server.requests[index])["messages"][-1]["content"]
        with lock:
            attempt = attempts[question] = attempts.get(question, 0) + 1
        number = int(question[1:])
        if number % 3 == 0 and attempt <= 2:
            return faults[(number // 3 + attempt) % len(faults)](handler, index)
        send_json(completion_body(question.upper()))(handler, index)

    server = serve(behave)
    chats = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
    backend = backend_for(server.url, max_concurrency=4, max_retries=3)
    result: list = []
    worker = threading.Thread(target=lambda: result.extend(backend.complete(chats)), daemon=True)
    worker.start()
    worker.join(HANG_LIMIT_S)
    assert not worker.is_alive()
    assert [c.text for c in result] == [f"Q{i}" for i in range(12)]


# --------------------------------------------------------------------------- a run's finished chains survive


def test_a_server_that_breaks_mid_run_loses_no_finished_chain(serve, tmp_path):
    from fcdpo.agent import Agent, AgentConfig
    from fcdpo.rollouts import read_trajectories, rollout
    from fcdpo.tasks import get_task

    task = get_task("math")
    problems = task.generate(6, seed=3)
    answers = {p.question: p.answer for p in problems}
    broken = threading.Event()

    def behave(handler, index):
        if broken.is_set():
            return send_json({"choices": [{"message": None}]})(handler, index)
        question = json.loads(server.requests[index])["messages"][1]["content"]
        send_json(completion_body(f"Final answer: {answers[question]}"))(handler, index)

    server = serve(behave)
    path = tmp_path / "chains.jsonl"

    class BreaksAfterFirstBatch(OpenAIBackend):
        def complete(self, chats, **kwargs):
            if len(server.requests) >= 2:
                broken.set()
            return super().complete(chats, **kwargs)

    backend = BreaksAfterFirstBatch("m", server.url, backoff=0.01, max_retries=1, timeout=TIMEOUT_S)
    backend.sleep = lambda s: None
    agent = Agent(task, backend, AgentConfig())
    with pytest.raises(BackendError, match="choices\\[0\\].message is a JSON null"):
        rollout(problems, agent, path, k=1, batch_size=2, progress=False)
    kept = read_trajectories(path)
    assert [t.problem_id for t in kept] == [p.id for p in problems[:2]] and all(t.correct for t in kept)
    broken.clear()
    backend.complete = lambda chats, **kwargs: OpenAIBackend.complete(backend, chats, **kwargs)
    rollout(problems, agent, path, k=1, batch_size=2, progress=False)
    assert sorted(t.problem_id for t in read_trajectories(path)) == sorted(p.id for p in problems)
