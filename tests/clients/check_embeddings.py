"""Embeddings through the real Python clients (ollama, openai) against a live `exo serve`.

Usage: check_embeddings.py BASE_URL MODEL
Prints one line per check and a final "N passed, N failed" line; exits non-zero on any failure.
"""
import math
import sys
import traceback

import ollama
import openai

base, model = sys.argv[1], sys.argv[2]
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


def norm(v):
    return math.sqrt(sum(x * x for x in v))


oc = ollama.Client(host=base)
ai = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
seen = {}


@check("ollama embed: one vector per input, unit length")
def _():
    r = oc.embed(model=model, input=["Hello there", "Goodbye"])
    assert len(r.embeddings) == 2, r
    assert all(abs(norm(v) - 1) < 1e-4 for v in r.embeddings)
    assert r.embeddings[0] != r.embeddings[1]
    seen["hello"] = r.embeddings[0]


@check("ollama embed: dimensions")
def _():
    r = oc.embed(model=model, input="Hello there", dimensions=8)
    assert len(r.embeddings[0]) == 8 and abs(norm(r.embeddings[0]) - 1) < 1e-4


@check("ollama embeddings (legacy)")
def _():
    r = oc.embeddings(model=model, prompt="Hello there")
    v = r.embedding
    n = norm(v)
    assert max(abs(x / n - y) for x, y in zip(v, seen["hello"])) < 1e-4


@check("ollama embed: an error is a ResponseError naming the field")
def _():
    try:
        oc.embed(model=model, input="x", dimensions=100000)
    except ollama.ResponseError as e:
        assert e.status_code == 400 and "dimensions" in str(e), e
    else:
        raise AssertionError("no error")


@check("openai embeddings (default: base64 on the wire)")
def _():
    r = ai.embeddings.create(model=model, input=["Hello there", "Goodbye"])
    assert [d.index for d in r.data] == [0, 1]
    v = r.data[0].embedding
    assert max(abs(x - y) for x, y in zip(v, seen["hello"])) < 1e-6
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens


@check("openai embeddings: floats, token ids")
def _():
    r = ai.embeddings.create(model=model, input="Hello there", encoding_format="float")
    assert max(abs(x - y) for x, y in zip(r.data[0].embedding, seen["hello"])) < 1e-6
    r = ai.embeddings.create(model=model, input=[[5, 6, 7], [8]], encoding_format="float")
    assert len(r.data) == 2 and r.usage.prompt_tokens == 4


@check("openai embeddings: a bad request is a BadRequestError naming the field")
def _():
    try:
        ai.embeddings.create(model=model, input="")
    except openai.BadRequestError as e:
        assert "input" in str(e), e
    else:
        raise AssertionError("no error")


failed = [n for n, e in results if e]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
