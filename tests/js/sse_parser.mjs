// Feeds claude-stream.js's SSEParser the same SSE text split at every position and prints
// what each split produced (one JSON line per split), for tests/test_claude_stream.py.
// Usage: node sse_parser.mjs <path of claude-stream.js> <JSON string of the SSE text>
const [modulePath, textJson] = process.argv.slice(2);
const { SSEParser, eventNumber, streamIdOf } = await import(modulePath);
const text = JSON.parse(textJson);
for (let cut = 0; cut <= text.length; cut++) {
  const parser = new SSEParser();
  const messages = [...parser.feed(text.slice(0, cut)), ...parser.feed(text.slice(cut))];
  process.stdout.write(JSON.stringify(messages) + "\n");
}
process.stdout.write(JSON.stringify({
  numbers: ["s1:7", "7", "", "abc", "s:1:2", "x:"].map(eventNumber),
  streams: ["s1:7", "7", "s:1:2"].map(streamIdOf),
}) + "\n");
