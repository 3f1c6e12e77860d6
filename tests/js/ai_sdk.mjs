// Drive the AI SDK's Anthropic provider (@ai-sdk/anthropic with `ai`'s streamText and
// generateText) against BASE_URL and print what the SDK yields, as JSON lines.
//
//   node tests/js/ai_sdk.mjs BASE_URL SCENARIO [OPTIONS_JSON]
//
// BASE_URL is the server root; the provider is given BASE_URL + "/v1", as for the API.
// SCENARIO: stream | generate | tool_use | tool_loop | thinking | abort
// OPTIONS_JSON: {"prompt": "...", "apiKey": "...", "maxRetries": 0, "abortAfter": 3}
// Each line is one of
//   {"part":{...}}      every part of streamText's fullStream (request/response details and
//                       timestamps left out: they name the server, not the answer)
//   {"final":{...}}     a stream's text, finish reason, usage and tool calls, once it ended
//   {"result":{...}}    the result of generateText
//   {"error":{...}}     what the SDK raised or streamed as an error
// A failure outside the SDK (bad arguments, a bug here) exits non-zero.
import { createAnthropic } from "@ai-sdk/anthropic";
import { APICallError, generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";

const MODEL = "claude-sonnet-5-5";
const WEATHER = {
  description: "Current weather for a city",
  inputSchema: jsonSchema({
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
  }),
};

function emit(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

/** An SDK error as data: its class, HTTP status, retryability, retry-after and error type. */
function describe(error) {
  if (APICallError.isInstance(error)) {
    return {
      name: error.name,
      status: error.statusCode ?? null,
      retryable: error.isRetryable,
      retryAfter: error.responseHeaders?.["retry-after"] ?? null,
      type: error.data?.error?.type ?? null,
      message: error.message,
    };
  }
  if (error instanceof Error) throw error; // not an answer from the server: a real failure
  // A stream's `event: error` reaches fullStream as the API's error object itself.
  return { name: null, status: null, retryable: null, retryAfter: null, type: error?.type ?? null,
           message: error?.message ?? null };
}

function part(value) {
  const { request, response, providerMetadata, ...kept } = value;
  if (value.type === "error") return { type: "error", error: describe(value.error) };
  // A thinking block's signature (its signature_delta) arrives as provider metadata.
  const signature = providerMetadata?.anthropic?.signature;
  if (signature !== undefined) kept.signature = signature;
  return kept;
}

async function stream(model, options, extra = {}) {
  let failed = false;
  const result = streamText({
    model,
    prompt: options.prompt,
    maxOutputTokens: 64,
    maxRetries: options.maxRetries ?? 0,
    onError: () => {}, // errors arrive as `error` parts; the default would log them
    ...extra,
  });
  for await (const value of result.fullStream) {
    if (value.type === "error") failed = true;
    if (value.type === "abort") failed = true;
    emit({ part: part(value) });
  }
  if (failed) return;
  emit({
    final: {
      text: await result.text,
      finishReason: await result.finishReason,
      usage: await result.totalUsage,
      toolCalls: (await result.toolCalls).map(({ toolCallId, toolName, input }) => ({
        toolCallId, toolName, input,
      })),
      steps: (await result.steps).length,
    },
  });
}

async function generate(model, options) {
  try {
    const result = await generateText({
      model,
      prompt: options.prompt,
      maxOutputTokens: 64,
      maxRetries: options.maxRetries ?? 0,
    });
    emit({
      result: {
        text: result.text,
        finishReason: result.finishReason,
        usage: result.usage,
        responseId: result.response.id,
      },
    });
  } catch (error) {
    emit({ error: describe(error) });
  }
}

/** Stream, and abort once `abortAfter` text deltas have arrived (a Stop button). */
async function abort(model, options) {
  const controller = new AbortController();
  let deltas = 0;
  const result = streamText({
    model,
    prompt: options.prompt,
    maxOutputTokens: 64,
    maxRetries: 0,
    abortSignal: controller.signal,
    onError: () => {},
  });
  for await (const value of result.fullStream) {
    emit({ part: part(value) });
    if (value.type === "text-delta" && ++deltas === (options.abortAfter ?? 3)) {
      controller.abort();
    }
  }
}

const SCENARIOS = {
  stream: (model, options) => stream(model, options),
  generate,
  tool_use: (model, options) =>
    stream(model, options, { tools: { get_weather: tool(WEATHER) } }),
  // The SDK runs the tool and sends its result back: a second request with the history.
  tool_loop: (model, options) =>
    stream(model, options, {
      tools: {
        get_weather: tool({ ...WEATHER, execute: async ({ city }) => `18°C in ${city}` }),
      },
      stopWhen: stepCountIs(2),
    }),
  thinking: (model, options) =>
    stream(model, options, {
      maxOutputTokens: 2048,
      providerOptions: { anthropic: { thinking: { type: "adaptive" } } },
    }),
  abort,
};

const [baseURL, scenario, optionsJSON = "{}"] = process.argv.slice(2);
if (!baseURL || !(scenario in SCENARIOS)) {
  process.stderr.write(
    `usage: node ai_sdk.mjs BASE_URL (${Object.keys(SCENARIOS).join("|")}) [OPTIONS_JSON]\n`,
  );
  process.exit(2);
}
const options = { prompt: "plain text please", ...JSON.parse(optionsJSON) };
const anthropic = createAnthropic({
  baseURL: baseURL + "/v1",
  apiKey: options.apiKey ?? "client-key",
});
await SCENARIOS[scenario](anthropic(MODEL), options);
