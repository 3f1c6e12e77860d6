// Prints claude-stream.js's `retryAfterOf` for each `retry-after` value given (one JSON
// array), for tests/test_claude_stream.py.
// Usage: node retry_after.mjs <path of claude-stream.js> <JSON array of values>
const [modulePath, valuesJson] = process.argv.slice(2);
const { retryAfterOf } = await import(modulePath);
const values = JSON.parse(valuesJson);
process.stdout.write(JSON.stringify(values.map((value) => retryAfterOf(new Headers({ "retry-after": value })))) + "\n");
