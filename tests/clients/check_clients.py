"""Drives a live `exo serve` with the real Python clients (ollama, openai, anthropic).

Usage: check_clients.py BASE_URL MODEL PULL_NAME [API_KEY]
With API_KEY (the server runs with --api-key), every client sends it, and clients without it
(or with a wrong one) must get a 401 in their API's error shape.
Prints one line per check and a final "N passed, N failed" line; exits non-zero on any failure.
"""
import json
import sys
import traceback
import urllib.error
import urllib.request

import anthropic
import ollama
import openai

base, model, pull_name = sys.argv[1], sys.argv[2], sys.argv[3]
api_key = sys.argv[4] if len(sys.argv) > 4 else None
results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name}", flush=True)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            results.append((name, traceback.format_exc()))
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        return fn
    return wrap


# Ollama clients send a key as a bearer header
oc = ollama.Client(host=base, headers={"Authorization": f"Bearer {api_key}"} if api_key else None)
opts = {"num_predict": 8, "temperature": 0, "seed": 1}


@check("ollama list")
def _():
    names = [m.model for m in oc.list().models]
    assert f"{model}:latest" in names, names  # tagged, as Ollama lists names


@check("ollama show")
def _():
    s = oc.show(model)
    assert s.modelinfo["general.architecture"] == "llama", s.modelinfo
    assert s.details.format == "gguf"
    assert "completion" in (s.capabilities or [])


@check("ollama generate")
def _():
    r = oc.generate(model=model, prompt="Hello", options=opts)
    assert r.done and r.done_reason == "length" and r.eval_count == 8, r
    assert isinstance(r.response, str)


@check("ollama generate streamed")
def _():
    chunks = list(oc.generate(model=model, prompt="Hello", options=opts, stream=True))
    assert chunks[-1].done and chunks[-1].eval_count == 8
    text = "".join(c.response for c in chunks)
    again = oc.generate(model=model, prompt="Hello", options=opts).response
    assert text == again, (text, again)


@check("ollama chat")
def _():
    r = oc.chat(model=model, messages=[{"role": "user", "content": "Hi"}], options=opts)
    assert r.message.role == "assistant" and r.done, r


@check("ollama chat streamed")
def _():
    chunks = list(oc.chat(model=model, messages=[{"role": "user", "content": "Hi"}], options=opts, stream=True))
    assert chunks[-1].done and all(c.message.role == "assistant" for c in chunks)


@check("ollama ps")
def _():
    names = [m.model for m in oc.ps().models]
    assert f"{model}:latest" in names, names


@check("ollama pull")
def _():
    statuses = [p.status for p in oc.pull(pull_name, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success", statuses
    assert pull_name.split(":")[0] in " ".join(m.model for m in oc.list().models)


@check("ollama unknown model is an error")
def _():
    try:
        oc.generate(model="no-such-model", prompt="x")
    except ollama.ResponseError as e:
        assert e.status_code == 404, e
    else:
        raise AssertionError("no error")


oa = openai.OpenAI(base_url=base + "/v1", api_key=api_key or "unused")


@check("openai chat")
def _():
    r = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6, r
    assert r.usage.total_tokens == r.usage.prompt_tokens + 6


@check("openai chat streamed with usage")
def _():
    stream = oa.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6, chunks[-1]
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)
    assert isinstance(text, str)


@check("openai models")
def _():
    assert model in [m.id for m in oa.models.list().data]


@check("openai bad request")
def _():
    try:
        oa.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=-3)
    except openai.BadRequestError as e:
        assert "max_tokens" in str(e), e
    else:
        raise AssertionError("no error")


ac = anthropic.Anthropic(base_url=base, api_key=api_key or "unused")
# greedy, so that no random draw ends the answer before max_tokens (this SDK version no longer
# takes temperature as an argument; the API field still exists)
greedy = {"temperature": 0}


@check("anthropic messages")
def _():
    m = ac.messages.create(model=model, max_tokens=5, messages=[{"role": "user", "content": "Hi"}], extra_body=greedy)
    assert m.role == "assistant" and m.stop_reason == "max_tokens" and m.usage.output_tokens == 5, m
    assert m.content[0].type == "text"


@check("anthropic messages streamed")
def _():
    with ac.messages.stream(model=model, max_tokens=5, messages=[{"role": "user", "content": "Hi"}],
                            extra_body=greedy) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.stop_reason == "max_tokens" and final.content[0].text == text, final


if api_key:
    def raw(path):
        try:
            with urllib.request.urlopen(base + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    @check("without key: GET / and /api/version stay open")
    def _():
        assert raw("/")[0] == 200
        status, body = raw("/api/version")
        assert status == 200 and "version" in json.loads(body), body

    @check("without key: raw 401 shapes (Ollama, OpenAI, Anthropic)")
    def _():
        status, body = raw("/api/tags")
        assert status == 401 and isinstance(json.loads(body)["error"], str), body
        status, body = raw("/v1/models")
        err = json.loads(body)["error"]
        assert status == 401 and err["type"] == "invalid_request_error" and err["code"] == "invalid_api_key", body
        req = urllib.request.Request(base + "/v1/messages", data=b"{}", method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("no error")
        except urllib.error.HTTPError as e:
            v = json.loads(e.read())
            assert e.code == 401 and v["type"] == "error" and v["error"]["type"] == "authentication_error", v

    @check("ollama without key: 401")
    def _():
        for c in [ollama.Client(host=base), ollama.Client(host=base, headers={"Authorization": "Bearer wrong"})]:
            try:
                c.generate(model=model, prompt="Hello", options=opts)
            except ollama.ResponseError as e:
                assert e.status_code == 401 and "API key" in e.error, (e.status_code, e.error)
            else:
                raise AssertionError("no error")

    @check("openai with a wrong key: 401")
    def _():
        bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong")
        try:
            bad.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        except openai.AuthenticationError as e:
            assert e.status_code == 401 and e.code == "invalid_api_key" and e.type == "invalid_request_error", e
        else:
            raise AssertionError("no error")

    @check("anthropic with a wrong key: 401")
    def _():
        bad = anthropic.Anthropic(base_url=base, api_key="wrong")
        try:
            bad.messages.create(model=model, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
        except anthropic.AuthenticationError as e:
            assert e.status_code == 401 and e.body["type"] == "error", e.body
            assert e.body["error"]["type"] == "authentication_error", e.body
        else:
            raise AssertionError("no error")


failed = [n for n, e in results if e]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
