"""Drives a live `exo serve` with real frameworks from PyPI: LangChain (ChatOllama, ChatOpenAI),
LiteLLM and llm with llm-ollama.

Usage: check_frameworks.py BASE_URL MODEL [API_KEY] [--tools] [--small] [--real=NAME] [--embeddings]
--tools: MODEL's chat template takes tools (a generated model): tool calls are checked, forced
  with tool_choice where the framework can, with enums in the schemas so that a random model's
  calls and objects are valid by construction and short.
--small: MODEL is a real model on a slow CPU: text chat and structured output through each
  framework only.
--real=NAME: then the --small set on the real model NAME too (one process: the frameworks take
  seconds to import).
--embeddings: only the embedding checks, a group of their own.
Prints one line per check and a final "N passed, N failed" line; exits non-zero on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Literal

# no network but the server's: LiteLLM reads its bundled model cost map instead of fetching one,
# llm keeps its keys, logs and llm-ollama's cache in a directory of its own
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("LLM_USER_PATH", tempfile.mkdtemp(prefix="exo-llm-"))
os.environ["LANGSMITH_TRACING"] = "false"

flags = {a.split("=")[0] for a in sys.argv[1:] if a.startswith("--")}
real = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--real=")), None)
args = [a for a in sys.argv[1:] if not a.startswith("--")]
if len(args) < 2 or not flags <= {"--tools", "--small", "--real", "--embeddings"}:
    sys.exit(__doc__)
base, model = args[0], args[1]
api_key = args[2] if len(args) > 2 else None
os.environ["OLLAMA_HOST"] = base
if api_key:
    os.environ["OLLAMA_API_KEY"] = api_key  # llm-ollama sends it as a bearer token

import litellm  # noqa: E402
import llm  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_ollama import ChatOllama, OllamaEmbeddings  # noqa: E402
from langchain_openai import ChatOpenAI, OpenAIEmbeddings  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

results = []


def check_named(name):
    def wrap(fn):
        t = time.monotonic()
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name} ({(time.monotonic() - t) * 1000:.0f} ms)", flush=True)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            results.append((name, traceback.format_exc()))
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        return fn
    return wrap


class Weather(BaseModel):
    """Where and for how many days."""
    city: Literal["Paris", "London"]
    days: int = Field(ge=1, le=9)


CITY_SCHEMA = {
    "title": "Weather",
    "description": "Where and for how many days.",
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "London"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


@tool
def get_weather(city: Literal["Paris", "London"]) -> str:
    """The weather in a city."""
    return f"21 degrees in {city}"


ASK = "What is the weather in Paris?"
auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}


def valid_weather(v):
    assert v["city"] in ("Paris", "London"), v
    assert 1 <= int(v.get("days", 1)) <= 9, v


def run(model, tools_on, small):
    """Every check for one model, each name prefixed with the model's name."""
    ollama_kw = dict(model=model, base_url=base, client_kwargs={"headers": auth}, temperature=0, seed=1)
    openai_kw = dict(model=model, base_url=base + "/v1", api_key=api_key or "unused", temperature=0, max_retries=0)
    lite_openai = dict(model=f"openai/{model}", api_base=base + "/v1", api_key=api_key or "unused")
    lite_ollama = dict(model=f"ollama_chat/{model}", api_base=base, api_key=api_key)

    def check(name):
        return check_named(f"[{model}] {name}")

    if "--embeddings" in flags:
        @check("langchain OllamaEmbeddings")
        def _():
            e = OllamaEmbeddings(model=model, base_url=base, client_kwargs={"headers": auth})
            docs = e.embed_documents(["hello", "world"])
            q = e.embed_query("hello")
            assert len(docs) == 2 and len(q) == len(docs[0]) > 0
            assert max(abs(a - b) for a, b in zip(q, docs[0])) < 1e-4

        @check("langchain OpenAIEmbeddings")
        def _():
            # no tiktoken (its encodings come from the internet): the server gets the raw texts
            e = OpenAIEmbeddings(model=model, base_url=base + "/v1", api_key=api_key or "unused",
                                 check_embedding_ctx_length=False, max_retries=0)
            docs = e.embed_documents(["hello", "world"])
            assert len(docs) == 2 and len(docs[0]) > 0

        @check("litellm embedding (openai/ and ollama/)")
        def _():
            r = litellm.embedding(input=["hello", "world"], **lite_openai)
            assert len(r.data) == 2 and len(r.data[0]["embedding"]) > 0, r
            r = litellm.embedding(model=f"ollama/{model}", api_base=base, api_key=api_key, input=["hello"])
            assert len(r.data) == 1 and len(r.data[0]["embedding"]) > 0, r
    else:
        # ---- LangChain ChatOllama
        @check("langchain ChatOllama invoke")
        def _():
            m = ChatOllama(num_predict=8, **ollama_kw).invoke("Hi")
            assert isinstance(m, AIMessage) and m.response_metadata["done_reason"] == "length", m
            assert m.usage_metadata["output_tokens"] == 8, m.usage_metadata

        if not small:
            @check("langchain ChatOllama stream")
            def _():
                chunks = list(ChatOllama(num_predict=8, **ollama_kw).stream("Hi"))
                whole = ChatOllama(num_predict=8, **ollama_kw).invoke("Hi")
                assert "".join(c.content for c in chunks) == whole.content

        @check("langchain ChatOllama with_structured_output(pydantic, json_schema)")
        def _():
            r = ChatOllama(num_predict=256, **ollama_kw).with_structured_output(Weather, method="json_schema").invoke(ASK)
            assert isinstance(r, Weather), r

        if not small:
            @check("langchain ChatOllama with_structured_output(dict schema, json_schema)")
            def _():
                r = ChatOllama(num_predict=256, **ollama_kw).with_structured_output(CITY_SCHEMA, method="json_schema").invoke(ASK)
                valid_weather(r)

        if tools_on:
            @check("langchain ChatOllama bind_tools: tools reach the template, calls parse")
            def _():
                plain = ChatOllama(num_predict=4, **ollama_kw).invoke(ASK)
                m = ChatOllama(num_predict=4, **ollama_kw).bind_tools([get_weather]).invoke(ASK)
                # Ollama has no tool_choice: a random model is not made to call, but the tools must be
                # in the prompt, and any call it makes must come back as tool_calls
                assert m.usage_metadata["input_tokens"] > plain.usage_metadata["input_tokens"] + 20, (m.usage_metadata, plain.usage_metadata)
                assert all(c["name"] == "get_weather" for c in m.tool_calls), m.tool_calls

            @check("langchain ChatOllama tool result round trip")
            def _():
                msgs = [HumanMessage(ASK),
                        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]),
                        ToolMessage("21 degrees", tool_call_id="call_1")]
                m = ChatOllama(num_predict=4, **ollama_kw).bind_tools([get_weather]).invoke(msgs)
                assert isinstance(m, AIMessage), m

        # ---- LangChain ChatOpenAI
        @check("langchain ChatOpenAI invoke")
        def _():
            m = ChatOpenAI(max_tokens=6, **openai_kw).invoke("Hi")
            assert m.response_metadata["finish_reason"] == "length" and m.usage_metadata["output_tokens"] == 6, m

        if not small:
            @check("langchain ChatOpenAI stream (with usage)")
            def _():
                chunks = list(ChatOpenAI(max_tokens=6, stream_usage=True, **openai_kw).stream("Hi"))
                total = chunks[0]
                for c in chunks[1:]:
                    total += c
                assert total.usage_metadata["output_tokens"] == 6, total.usage_metadata

        @check("langchain ChatOpenAI with_structured_output(pydantic, json_schema)")
        def _():
            r = ChatOpenAI(max_tokens=256, **openai_kw).with_structured_output(Weather, method="json_schema").invoke(ASK)
            assert isinstance(r, Weather), r

        if tools_on:
            @check("langchain ChatOpenAI bind_tools(tool_choice='get_weather') -> AIMessage.tool_calls")
            def _():
                m = ChatOpenAI(max_tokens=400, **openai_kw).bind_tools([get_weather], tool_choice="get_weather").invoke(ASK)
                assert len(m.tool_calls) == 1 and m.tool_calls[0]["name"] == "get_weather", m
                assert m.tool_calls[0]["args"]["city"] in ("Paris", "London"), m.tool_calls

            @check("langchain ChatOpenAI bind_tools(tool_choice='any') streamed -> tool_call_chunks")
            def _():
                chunks = list(ChatOpenAI(max_tokens=400, **openai_kw).bind_tools([get_weather], tool_choice="any").stream(ASK))
                total = chunks[0]
                for c in chunks[1:]:
                    total += c
                assert len(total.tool_calls) == 1 and total.tool_calls[0]["args"]["city"] in ("Paris", "London"), total

            @check("langchain ChatOpenAI with_structured_output(function_calling)")
            def _():
                r = ChatOpenAI(max_tokens=400, **openai_kw).with_structured_output(Weather, method="function_calling").invoke(ASK)
                assert isinstance(r, Weather), r

            @check("langchain ChatOpenAI tool loop: call, run the tool, answer")
            def _():
                llm_t = ChatOpenAI(max_tokens=400, **openai_kw).bind_tools([get_weather], tool_choice="get_weather")
                msgs = [HumanMessage(ASK)]
                ai = llm_t.invoke(msgs)
                msgs += [ai, get_weather.invoke(ai.tool_calls[0])]
                final = ChatOpenAI(max_tokens=4, **openai_kw).bind_tools([get_weather]).invoke(msgs)
                assert isinstance(final, AIMessage), final

        if not small:
            @check("langchain ChatOpenAI use_responses_api=True")
            def _():
                m = ChatOpenAI(max_tokens=6, use_responses_api=True, **openai_kw).invoke("Hi")
                assert m.usage_metadata["output_tokens"] == 6, m

        # ---- LiteLLM
        @check("litellm completion openai/ (text)")
        def _():
            r = litellm.completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0, **lite_openai)
            assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6, r

        @check("litellm completion openai/ response_format json_schema")
        def _():
            r = litellm.completion(messages=[{"role": "user", "content": ASK}], max_tokens=256, temperature=0,
                                   response_format=Weather, **lite_openai)
            Weather.model_validate_json(r.choices[0].message.content)

        @check("litellm completion ollama_chat/ (text)")
        def _():
            r = litellm.completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0, **lite_ollama)
            assert r.usage.completion_tokens == 6 and isinstance(r.choices[0].message.content, str), r

        @check("litellm completion ollama_chat/ response_format json_schema")
        def _():
            r = litellm.completion(messages=[{"role": "user", "content": ASK}], max_tokens=256, temperature=0,
                                   response_format=Weather, **lite_ollama)
            Weather.model_validate_json(r.choices[0].message.content)

        if not small:
            @check("litellm completion openai/ stream")
            def _():
                chunks = list(litellm.completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0,
                                                 stream=True, **lite_openai))
                assert any(c.choices[0].finish_reason == "length" for c in chunks), chunks[-1]

        weather_tool = {"type": "function", "function": {
            "name": "get_weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}},
                           "required": ["city"]}}}
        if tools_on:
            @check("litellm completion openai/ tools, tool_choice forced")
            def _():
                r = litellm.completion(messages=[{"role": "user", "content": ASK}], max_tokens=400, tools=[weather_tool],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}}, **lite_openai)
                c = r.choices[0].message.tool_calls[0]
                assert c.function.name == "get_weather" and json.loads(c.function.arguments)["city"] in ("Paris", "London"), r

            @check("litellm completion ollama_chat/ tools reach the server")
            def _():
                r = litellm.completion(messages=[{"role": "user", "content": ASK}], max_tokens=4, temperature=0,
                                       tools=[weather_tool], **lite_ollama)
                plain = litellm.completion(messages=[{"role": "user", "content": ASK}], max_tokens=4, temperature=0, **lite_ollama)
                assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 20, (r.usage, plain.usage)
                for c in r.choices[0].message.tool_calls or []:
                    assert c.function.name == "get_weather", c

        # ---- llm + llm-ollama (models named ollama/NAME, as llm-ollama registers them)
        llm_id = f"ollama/{model}"
        llm_bin = Path(sys.executable).parent / "llm"

        if small:
            @check("llm Python API: text")
            def _():
                r = llm.get_model(llm_id).prompt("Hi", num_predict=6, temperature=0)
                assert isinstance(r.text(), str) and r.usage().output == 6, r.usage()
        else:
            @check("llm CLI: llm -m ollama/MODEL prompt (as the Python API answers)")
            def _():
                out = subprocess.run([str(llm_bin), "-m", llm_id, "-o", "num_predict", "6", "-o", "temperature", "0",
                                      "Hi"], capture_output=True, text=True, timeout=120)
                assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
                r = llm.get_model(llm_id).prompt("Hi", num_predict=6, temperature=0)
                assert out.stdout.rstrip("\n") == r.text(), (out.stdout, r.text())

        @check("llm Python API: schema (valid by construction)")
        def _():
            r = llm.get_model(llm_id).prompt(ASK, schema=CITY_SCHEMA, num_predict=256, temperature=0)
            valid_weather(json.loads(r.text()))

        if tools_on:
            @check("llm-ollama sees tools (from /api/show capabilities); tools reach the server")
            def _():
                m = llm.get_model(llm_id)
                assert m.supports_tools and m.supports_schema, (m.supports_tools, m.supports_schema)

                def weather(city: str) -> str:
                    """The weather in a city."""
                    return "21 degrees"
                plain = m.prompt(ASK, num_predict=4, temperature=0)
                plain.text()
                r = m.prompt(ASK, tools=[weather], num_predict=4, temperature=0)
                r.text()
                assert r.usage().input > plain.usage().input + 20, (r.usage(), plain.usage())
                assert all(c.name == "weather" for c in r.tool_calls()), r.tool_calls()
        else:
            @check("llm-ollama: a model without tools is registered without them")
            def _():
                assert not llm.get_model(llm_id).supports_tools


run(model, "--tools" in flags, "--small" in flags)
if real:
    run(real, False, True)

failed = [n for n, e in results if e]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
