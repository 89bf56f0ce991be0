// Drives a live `exo serve` with the real Node clients from npm (ollama-js, openai-node).
//
// Usage: node check_clients.mjs BASE_URL MODEL [API_KEY] [--tools] [--small] [--embeddings]
// --tools: MODEL's chat template takes tools (a generated model): tool calls are checked, forced
//   through tool_choice or made valid by construction with enums in the parameters' schema.
// --small: MODEL is a real model on a slow CPU: chat, structured output and errors only.
// --embeddings: only the embedding checks (/api/embed, /v1/embeddings), a group of its own.
// Prints one line per check and a final "N passed, N failed" line; exits non-zero on any failure.
import { Ollama } from "ollama";
import OpenAI from "openai";

const flags = new Set(process.argv.slice(2).filter((a) => a.startsWith("--")));
const [base, model, apiKey] = process.argv.slice(2).filter((a) => !a.startsWith("--"));
if (!base || !model) {
  console.error("usage: node check_clients.mjs BASE_URL MODEL [API_KEY] [--tools] [--small] [--embeddings]");
  process.exit(2);
}
const small = flags.has("--small");
const results = [];

// `full` checks are left out with --small
async function check(name, fn, full = false) {
  if (full && small) return;
  const t = Date.now();
  try {
    await fn();
    results.push([name, null]);
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    results.push([name, e]);
    console.log(`FAIL ${name}\n${e?.stack ?? e}`);
  }
}

function assert(cond, ...what) {
  if (!cond) throw new Error(`assertion failed: ${what.map((w) => JSON.stringify(w)).join(" ")}`);
}

// A tool whose arguments are valid by construction: an enum, so that a grammar-forced call from a
// random model ends in a handful of tokens.
const weatherParams = {
  type: "object",
  properties: { city: { type: "string", enum: ["Paris", "London"] } },
  required: ["city"],
};
const tools = [
  { type: "function", function: { name: "get_weather", description: "The weather in a city", parameters: weatherParams } },
];
// A schema that any model fills quickly: an enum and a small bounded integer.
const citySchema = {
  type: "object",
  properties: { city: { type: "string", enum: ["Paris", "London"] }, days: { type: "integer", minimum: 1, maximum: 9 } },
  required: ["city", "days"],
  additionalProperties: false,
};
const ask = [{ role: "user", content: "What is the weather in Paris?" }];

const oc = new Ollama({ host: base, headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {} });
const opts = { num_predict: 8, temperature: 0, seed: 1 };
const oa = new OpenAI({ baseURL: `${base}/v1`, apiKey: apiKey ?? "unused", maxRetries: 0 });

if (flags.has("--embeddings")) {
  await check("ollama-js embed", async () => {
    const r = await oc.embed({ model, input: ["hello", "world"] });
    assert(r.embeddings.length === 2 && r.embeddings[0].length > 0, r.embeddings.length);
    const norm = Math.hypot(...r.embeddings[0]);
    assert(Math.abs(norm - 1) < 1e-3, "normalized as Ollama does", norm);
  });
  await check("ollama-js embeddings (legacy)", async () => {
    const r = await oc.embeddings({ model, prompt: "hello" });
    assert(r.embedding.length > 0, r);
  });
  await check("openai-node embeddings", async () => {
    const r = await oa.embeddings.create({ model, input: ["hello", "world"] });
    assert(r.data.length === 2 && r.data[1].index === 1 && r.data[0].embedding.length > 0, r.data.length);
    const one = await oa.embeddings.create({ model, input: "hello" });
    const d = one.data[0].embedding.map((x, i) => Math.abs(x - r.data[0].embedding[i]));
    assert(Math.max(...d) < 1e-4, "the same text embeds the same alone or in a batch");
  });
} else {
  // ---- ollama-js
  await check("ollama-js chat", async () => {
    const r = await oc.chat({ model, messages: [{ role: "user", content: "Hi" }], options: opts });
    assert(r.message.role === "assistant" && r.done && r.eval_count === 8, r);
  });

  await check("ollama-js chat streamed", async () => {
    const parts = [];
    for await (const c of await oc.chat({ model, messages: [{ role: "user", content: "Hi" }], options: opts, stream: true })) {
      parts.push(c);
    }
    const last = parts.at(-1);
    assert(last.done && last.eval_count === 8, last);
    const text = parts.map((c) => c.message.content).join("");
    const again = await oc.chat({ model, messages: [{ role: "user", content: "Hi" }], options: opts });
    assert(text === again.message.content, text, again.message.content);
  });

  await check("ollama-js format: JSON schema -> JSON.parse", async () => {
    const r = await oc.chat({ model, messages: ask, format: citySchema, options: { ...opts, num_predict: 256 } });
    const v = JSON.parse(r.message.content);
    assert(["Paris", "London"].includes(v.city) && Number.isInteger(v.days), v);
  });

  await check("ollama-js format: json", async () => {
    const r = await oc.chat({
      model, messages: [{ role: "user", content: "Answer in JSON" }], format: "json",
      options: { ...opts, num_predict: 512 },
    });
    // a random model may run out of tokens inside the object; only a finished one must parse
    if (r.done_reason === "stop") JSON.parse(r.message.content);
    assert(r.message.content.trimStart().startsWith("{"), r.message.content);
  }, true);

  if (flags.has("--tools")) {
    await check("ollama-js show lists tools", async () => {
      const s = await oc.show({ model });
      assert(s.capabilities?.includes("tools"), s.capabilities);
    });

    await check("ollama-js tools reach the template; calls come back in message.tool_calls", async () => {
      const plain = await oc.chat({ model, messages: ask, options: opts });
      const r = await oc.chat({ model, messages: ask, tools, options: opts });
      // the tools are rendered into the prompt (Ollama has no tool_choice to force a call)
      assert(r.prompt_eval_count > plain.prompt_eval_count + 20, r.prompt_eval_count, plain.prompt_eval_count);
      for (const c of r.message.tool_calls ?? []) {
        assert(c.function.name === "get_weather" && typeof c.function.arguments === "object", c);
      }
    });

    await check("ollama-js tool result round trip", async () => {
      const messages = [
        ...ask,
        { role: "assistant", content: "", tool_calls: [{ function: { name: "get_weather", arguments: { city: "Paris" } } }] },
        { role: "tool", content: '{"temperature": 21}', tool_name: "get_weather" },
      ];
      const r = await oc.chat({ model, messages, tools, options: opts });
      assert(r.done && r.message.role === "assistant", r);
    });
  }

  await check("ollama-js unknown model -> ResponseError 404", async () => {
    try {
      await oc.chat({ model: "no-such-model", messages: [{ role: "user", content: "Hi" }] });
    } catch (e) {
      assert(e.name === "ResponseError" && e.status_code === 404 && e.error.length > 0, e.name, e.status_code, e.error);
      return;
    }
    throw new Error("no error");
  });

  // ---- openai-node
  await check("openai-node chat", async () => {
    const r = await oa.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], max_tokens: 6, temperature: 0 });
    assert(r.choices[0].finish_reason === "length" && r.usage.completion_tokens === 6, r);
  });

  await check("openai-node chat streamed", async () => {
    const stream = await oa.chat.completions.create({
      model, messages: [{ role: "user", content: "Hi" }], max_tokens: 6, temperature: 0, stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert(chunks.at(-1).usage?.completion_tokens === 6, chunks.at(-1));
    assert(chunks.some((c) => c.choices?.[0]?.finish_reason === "length"));
  });

  await check("openai-node response_format json_schema -> JSON.parse", async () => {
    const r = await oa.chat.completions.create({
      model, messages: ask, max_tokens: 256, temperature: 0,
      response_format: { type: "json_schema", json_schema: { name: "city", schema: citySchema, strict: true } },
    });
    const v = JSON.parse(r.choices[0].message.content);
    assert(["Paris", "London"].includes(v.city) && v.days >= 1 && v.days <= 9, v);
  });

  await check("openai-node chat.completions.parse (json_schema) -> message.parsed", async () => {
    const r = await oa.chat.completions.parse({
      model, messages: ask, max_tokens: 256, temperature: 0,
      response_format: { type: "json_schema", json_schema: { name: "city", schema: citySchema, strict: true } },
    });
    const p = r.choices[0].message.parsed;
    assert(p && ["Paris", "London"].includes(p.city), r.choices[0].message);
  }, true);

  if (flags.has("--tools")) {
    const named = { type: "function", function: { name: "get_weather" } };
    const validCall = (c) => {
      assert(c.type === "function" && c.function.name === "get_weather" && c.id, c);
      const a = JSON.parse(c.function.arguments);
      assert(["Paris", "London"].includes(a.city), a);
    };

    await check("openai-node tools, tool_choice named -> a valid call", async () => {
      const r = await oa.chat.completions.create({ model, messages: ask, tools, tool_choice: named, max_tokens: 400 });
      const m = r.choices[0].message;
      assert(r.choices[0].finish_reason === "tool_calls" && m.tool_calls?.length === 1, r.choices[0]);
      validCall(m.tool_calls[0]);
    });

    await check("openai-node tools, tool_choice required, streamed -> tool_calls deltas", async () => {
      const stream = await oa.chat.completions.create({ model, messages: ask, tools, tool_choice: "required", max_tokens: 400, stream: true });
      const calls = [];
      let finish;
      for await (const c of stream) {
        const ch = c.choices?.[0];
        if (!ch) continue;
        finish = ch.finish_reason ?? finish;
        for (const d of ch.delta.tool_calls ?? []) {
          calls[d.index] ??= { id: "", type: "function", function: { name: "", arguments: "" } };
          const t = calls[d.index];
          if (d.id) t.id = d.id;
          if (d.function?.name) t.function.name += d.function.name;
          if (d.function?.arguments) t.function.arguments += d.function.arguments;
        }
      }
      assert(finish === "tool_calls" && calls.length === 1, finish, calls);
      validCall(calls[0]);
    });

    await check("openai-node chat.completions.stream helper -> finalChatCompletion tool call", async () => {
      const runner = oa.chat.completions.stream({ model, messages: ask, tools, tool_choice: named, max_tokens: 400 });
      const done = await runner.finalChatCompletion();
      validCall(done.choices[0].message.tool_calls[0]);
    });

    await check("openai-node tool result round trip", async () => {
      const first = await oa.chat.completions.create({ model, messages: ask, tools, tool_choice: named, max_tokens: 400 });
      const call = first.choices[0].message.tool_calls[0];
      const r = await oa.chat.completions.create({
        model, tools, max_tokens: 4, temperature: 0,
        messages: [...ask, first.choices[0].message, { role: "tool", tool_call_id: call.id, content: '{"temperature": 21}' }],
      });
      assert(r.choices[0].message.role === "assistant", r.choices[0]);
    });

    await check("openai-node responses.create with a function tool, tool_choice required", async () => {
      const r = await oa.responses.create({
        model, input: "What is the weather in Paris?", max_output_tokens: 400, tool_choice: "required",
        tools: [{ type: "function", name: "get_weather", description: "The weather in a city", parameters: weatherParams, strict: true }],
      });
      const fc = r.output.find((o) => o.type === "function_call");
      assert(fc && fc.name === "get_weather" && fc.call_id, r.output);
      assert(["Paris", "London"].includes(JSON.parse(fc.arguments).city), fc.arguments);
    });
  }

  await check("openai-node responses.create (text)", async () => {
    const r = await oa.responses.create({ model, input: "Hi", max_output_tokens: 6, temperature: 0 });
    assert(r.object === "response" && r.output[0].type === "message" && typeof r.output_text === "string", r);
    assert(r.usage.output_tokens === 6, r.usage);
  });

  await check("openai-node responses.create (stream)", async () => {
    const stream = await oa.responses.create({ model, input: "Hi", max_output_tokens: 6, temperature: 0, stream: true });
    const types = [];
    let text = "";
    let final;
    for await (const e of stream) {
      types.push(e.type);
      if (e.type === "response.output_text.delta") text += e.delta;
      // cut by max_output_tokens, the last event is response.incomplete
      if (e.type === "response.completed" || e.type === "response.incomplete") final = e.response;
    }
    assert(types[0] === "response.created" && types.at(-1) === `response.${final.status}`, types);
    assert(final.output_text === text || final.output[0].content[0].text === text, final, text);
  });

  await check("openai-node responses.create text.format json_schema", async () => {
    const r = await oa.responses.create({
      model, input: "Where?", max_output_tokens: 256, temperature: 0,
      text: { format: { type: "json_schema", name: "city", schema: citySchema, strict: true } },
    });
    assert(["Paris", "London"].includes(JSON.parse(r.output_text).city), r.output_text);
  }, true);

  await check("openai-node models.list / retrieve", async () => {
    const ids = [];
    for await (const m of oa.models.list()) ids.push(m.id);
    assert(ids.includes(model), ids);
    const m = await oa.models.retrieve(model);
    assert(m.id === model && m.object === "model", m);
  });

  await check("openai-node unknown model -> NotFoundError", async () => {
    for (const call of [
      () => oa.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "Hi" }] }),
      () => oa.models.retrieve("no-such-model"),
    ]) {
      try {
        await call();
        throw new Error("no error");
      } catch (e) {
        assert(e instanceof OpenAI.NotFoundError && e.status === 404, e.constructor.name, e.status, e.message);
        assert(e.message.includes("no-such-model"), e.message);
      }
    }
  });

  await check("openai-node bad request -> BadRequestError naming the field", async () => {
    try {
      await oa.chat.completions.create({ model, messages: [{ role: "user", content: "Hi" }], tools, tool_choice: { type: "function", function: { name: "nope" } } });
      throw new Error("no error");
    } catch (e) {
      // a model whose template takes no tools refuses them; one that does refuses the unknown name
      const why = flags.has("--tools") ? /tool_choice.*nope|nope.*tool_choice/ : /does not support tools/;
      assert(e instanceof OpenAI.BadRequestError && why.test(e.message), e.constructor.name, e.message);
    }
  });
}

const failed = results.filter(([, e]) => e).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
