// Reads one answer of the sidecar's `ui` route as the AI SDK's transport does and checks
// every chunk against the SDK's own schema: `parseJsonEventStream` (the SSE parsing
// DefaultChatTransport uses, `[DONE]` skipped) with `uiMessageChunkSchema`. Alongside, the
// raw SSE events (the same parser's events, before any JSON) show where `[DONE]` fell.
// Usage: node ui_schema.mjs <url> <GET|POST> [JSON body]
// Prints {opened, status, streamId, cache} once the response's headers are in, then
// {status, chunks, rejected, raw, text, failure, parts, states} at its end: `chunks` the types the
// schema accepted, `rejected` each event it refused ({data, error}), `raw` every event's
// data as sent, `failure` what the SDK's message assembly threw on the accepted chunks.
import { parseJsonEventStream, readUIMessageStream, uiMessageChunkSchema } from "ai";
// The SSE parser @ai-sdk/provider-utils itself uses (installed with `ai`, pinned by the lock).
import { EventSourceParserStream } from "eventsource-parser/stream";

const [url, method, body] = process.argv.slice(2);

function print(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

async function collect(stream) {
  const out = [];
  const reader = stream.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return out;
    out.push(value);
  }
}

const response = await fetch(url, {
  method,
  headers: body === undefined ? {} : { "content-type": "application/json" },
  body,
});
print({
  opened: true, status: response.status, streamId: response.headers.get("sidecar-stream-id"),
  cache: response.headers.get("x-cache"),
  protocol: response.headers.get("x-vercel-ai-ui-message-stream"),
  contentType: response.headers.get("content-type"),
});
if (!response.ok || response.body === null || response.status === 204) {
  print({ status: response.status, body: await response.text() });
} else {
  const [forSchema, forRaw] = response.body.tee();
  const raw = [];
  const splitting = forRaw.pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream())
    .pipeTo(new WritableStream({ write(event) { raw.push(event.data); } }));
  const parsed = await collect(parseJsonEventStream({ stream: forSchema, schema: uiMessageChunkSchema }));
  await splitting;
  const chunks = [];
  const rejected = [];
  for (const result of parsed) {
    if (result.success) chunks.push(result.value.type);
    else rejected.push({ data: result.rawValue ?? null, error: String(result.error.message) });
  }
  const text = parsed.filter((r) => r.success && r.value.type === "text-delta")
    .map((r) => r.value.delta).join("");
  // The accepted chunks through the SDK's message assembly (what useChat shows): it
  // reports an `error` chunk's text to onError, and so anything it cannot assemble (a
  // delta of no open part…); `failure` is what it reported beyond the error chunks.
  const accepted = parsed.filter((r) => r.success).map((r) => r.value);
  const expected = accepted.filter((c) => c.type === "error").map((c) => c.errorText);
  const reported = [];
  let built;
  try {
    const stream = new ReadableStream({
      start(controller) { accepted.forEach((c) => controller.enqueue(c)); controller.close(); },
    });
    const onError = (e) => { reported.push(String(e && e.message ? e.message : e)); };
    for await (const message of readUIMessageStream({ stream, onError })) built = message;
  } catch (e) {
    reported.push(String(e && e.message ? e.message : e));
  }
  for (const text of expected) {
    const at = reported.indexOf(text);
    if (at >= 0) reported.splice(at, 1);
  }
  const failure = reported.length ? reported.join("; ") : null;
  print({ status: response.status, chunks, rejected, raw, text, failure,
          parts: built ? built.parts.map((p) => p.type) : null,
          // Each part's state as the SDK left it (`streaming` for one never closed).
          states: built ? built.parts.map((p) => p.state ?? null) : null });
}
