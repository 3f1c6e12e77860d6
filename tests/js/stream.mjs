// Drive the official Anthropic JS SDK against BASE_URL and print what it yields, as JSON lines.
//
//   node tests/js/stream.mjs BASE_URL SCENARIO [MAX_RETRIES]
//
// SCENARIO: text | tool_use | thinking | multi_turn | error_429 | error_529 | midstream_error
// | non_streaming | retried (529 twice, then an answer: for MAX_RETRIES >= 2, default 0).
// Each line is one of
//   {"turn":N,"event":{...}}       every event `client.messages.stream()` yields
//   {"turn":N,"final":{...}}       its finalMessage()
//   {"turn":N,"message":{...}}     the result of a non-streaming `messages.create()`
//   {"turn":N,"error":{"name","classes","status","type","message"}}  what the SDK raised
// A failure outside the SDK call (bad arguments, a bug here) exits non-zero.
import Anthropic from "@anthropic-ai/sdk";

const MODEL = "claude-sonnet-5-5";
const WEATHER_TOOL = {
  name: "get_weather",
  description: "Current weather for a city",
  input_schema: {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
  },
};

function emit(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

/** The class chain of an error, most specific first: ["OverloadedError", ..., "Error"]. */
function classes(error) {
  const names = [];
  for (let proto = Object.getPrototypeOf(error); proto && proto !== Object.prototype; ) {
    names.push(proto.constructor.name);
    proto = Object.getPrototypeOf(proto);
  }
  return names;
}

function describe(error) {
  if (!(error instanceof Anthropic.AnthropicError)) throw error; // not the SDK's: a real failure
  return {
    name: error.constructor.name,
    classes: classes(error),
    status: error.status ?? null,
    type: error.type ?? null,
    message: error.message,
  };
}

/** Stream one turn, printing every event and the final message; null when the SDK raised. */
async function streamTurn(client, turn, params) {
  const stream = client.messages.stream({ model: MODEL, max_tokens: 64, ...params });
  try {
    for await (const event of stream) emit({ turn, event });
    // An `event: error` read together with the events before it ends the iteration quietly;
    // finalMessage() is where the SDK reports it then.
    const final = await stream.finalMessage();
    emit({ turn, final });
    return final;
  } catch (error) {
    emit({ turn, error: describe(error) });
    return null;
  }
}

function user(content) {
  return { role: "user", content };
}

/** Tool use, the tool's result sent back, then a plain follow-up: three turns, one history. */
async function multiTurn(client) {
  const messages = [user("What is the weather in Paris? [[fake content=tool_use]]")];
  const first = await streamTurn(client, 1, { messages, tools: [WEATHER_TOOL] });
  if (!first) return;
  const call = first.content.find((block) => block.type === "tool_use");
  if (!call) throw new Error("turn 1 has no tool_use block");
  messages.push({ role: "assistant", content: first.content });
  messages.push(
    user([{ type: "tool_result", tool_use_id: call.id, content: `18°C in ${call.input.city}` }]),
  );
  const second = await streamTurn(client, 2, { messages, tools: [WEATHER_TOOL] });
  if (!second) return;
  messages.push({ role: "assistant", content: second.content });
  messages.push(user("Thanks! And tomorrow?"));
  await streamTurn(client, 3, { messages, tools: [WEATHER_TOOL] });
}

async function nonStreaming(client) {
  try {
    const message = await client.messages.create({
      model: MODEL,
      max_tokens: 64,
      messages: [user("a complete answer, please")],
    });
    emit({ turn: 1, message });
  } catch (error) {
    emit({ turn: 1, error: describe(error) });
  }
}

const SCENARIOS = {
  text: (client) => streamTurn(client, 1, { messages: [user("plain text please")] }),
  tool_use: (client) =>
    streamTurn(client, 1, {
      messages: [user("weather? [[fake content=tool_use]]")],
      tools: [WEATHER_TOOL],
    }),
  thinking: (client) =>
    streamTurn(client, 1, {
      max_tokens: 2048,
      thinking: { type: "enabled", budget_tokens: 1024 },
      messages: [user("think first [[fake content=thinking]]")],
    }),
  multi_turn: multiTurn,
  error_429: (client) =>
    streamTurn(client, 1, { messages: [user("[[fake fault=rate_limit retry_after=0]]")] }),
  error_529: (client) =>
    streamTurn(client, 1, { messages: [user("[[fake fault=overloaded retry_after=0]]")] }),
  midstream_error: (client) =>
    streamTurn(client, 1, { messages: [user("[[fake fault=midstream_error after=3]]")] }),
  non_streaming: nonStreaming,
  retried: (client) =>
    streamTurn(client, 1, {
      messages: [user("[[fake fault=overloaded retry_after=0.01 fail_times=2 fail_key=js]] again")],
    }),
};

const [baseURL, scenario, maxRetries = "0"] = process.argv.slice(2);
if (!baseURL || !(scenario in SCENARIOS) || !/^\d+$/.test(maxRetries)) {
  process.stderr.write(
    `usage: node stream.mjs BASE_URL (${Object.keys(SCENARIOS).join("|")}) [MAX_RETRIES]\n`,
  );
  process.exit(2);
}
const client = new Anthropic({
  baseURL,
  apiKey: "client-key",
  maxRetries: Number(maxRetries),
  timeout: 10_000,
});
await SCENARIOS[scenario](client);
