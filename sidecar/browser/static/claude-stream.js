// claude-stream.js: stream Claude through claude-sidecar from a browser. No dependencies.
// Served by the sidecar at <browser.path>/claude-stream.js; copy it into a front end freely.
//
//   import { streamClaude } from "https://sidecar.example.com/_sidecar/claude-stream.js";
//   const stream = streamClaude("/api/stream-response", { body: { prompt: "Hello" } });
//   for await (const event of stream) if (event.type === "token") output.append(event.text);
//
// Both modes read the stream by `fetch`: POST with a JSON body and custom headers; GET
// (`?prompt=` in the URL) with what an `EventSource` would send (a simple request, no
// preflight), but seeing the response's head, which an `EventSource` hides: the stream id
// of `Sidecar-Stream-Id` (a cut before the first event resumes) and a refusal's status.
//
// Recovery: a 30 s idle watchdog (any bytes, heartbeats included, count as life) and, when
// the server makes its streams resumable (it sends `Sidecar-Stream-Id` and ids
// `<stream id>:<n>`), automatic resume with Last-Event-ID, backoff and a retry limit, also
// when the replica serving the stream stops (`shutting_down` without an id). Events are
// applied once by their number, so a resumed stream never repeats text. `abort()` cancels
// the generation (DELETE <url>/<stream id>); a lost connection does not. Stopped before the
// response's head names the stream, it waits for the head at most `stopTimeoutMs` (5 s),
// then gives up locally: `aborted` with `cancelled: false`.

const DEFAULTS = {
  method: "POST", idleTimeoutMs: 30000, maxRetries: 5, retryBaseMs: 500, retryMaxMs: 8000,
  credentials: "same-origin", tokenParam: "access_token", stopTimeoutMs: 5000,
};

/** An error of the stream: `type` (e.g. rate_limited), HTTP `status`, `retryAfter` seconds. */
export class ClaudeStreamError extends Error {
  constructor(type, message, { status = null, retryAfter = null, requestId = null } = {}) {
    super(message || type);
    this.name = "ClaudeStreamError";
    this.type = type;
    this.status = status;
    this.retryAfter = retryAfter;
    this.requestId = requestId;
  }
}

/** Start a stream; returns a `ClaudeStream` (async iterable, with callbacks and `abort()`). */
export function streamClaude(url, options = {}) {
  return new ClaudeStream(url, options);
}

/** The event number of an SSE id: `<stream id>:<n>` or a bare `<n>`; null for anything else. */
export function eventNumber(id) {
  const digits = id ? id.slice(id.lastIndexOf(":") + 1) : "";
  return /^[0-9]{1,15}$/.test(digits) ? Number(digits) : null;
}

/** The stream id of `<stream id>:<n>` (null for a bare number: not resumable). */
export function streamIdOf(id) {
  const at = id.lastIndexOf(":");
  return at > 0 ? id.slice(0, at) : null;
}

/** An incremental SSE parser (WHATWG rules): feed text, get {id, event, data} messages. */
export class SSEParser {
  constructor() { this.buffer = ""; this.data = []; this.event = ""; this.lastId = ""; this.ownId = false; this.cr = false; }

  feed(text) {
    const out = [];
    // A chunk ending in \r may be half of a \r\n: its \n must not end a second line.
    if (this.cr && text[0] === "\n") text = text.slice(1);
    this.cr = text.endsWith("\r");
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (this.data.length) out.push({ id: this.lastId, ownId: this.ownId, event: this.event || "message", data: this.data.join("\n") });
        this.data = []; this.event = ""; this.ownId = false;
        continue;
      }
      if (line[0] === ":") continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.event = value;
      else if (field === "id" && !value.includes("\0")) { this.lastId = value; this.ownId = true; }
    }
    return out;
  }
}

const MAX_RETRY_AFTER = 86400; // seconds: a longer wait is read as a day

/** `retry-after` in seconds (0 to a day), or null when it holds no valid value (RFC 9110:
 *  whole seconds in ASCII digits, or an HTTP-date; never `-5`, `1e9`, `0x10`, `Infinity`). */
export function retryAfterOf(headers) {
  const value = ((headers && headers.get("retry-after")) || "").trim();
  if (/^[0-9]+$/.test(value)) return Math.min(MAX_RETRY_AFTER, Number(value));
  if (!/^[A-Za-z]{3},? /.test(value)) return null;
  const date = Date.parse(value);
  if (Number.isNaN(date)) return null;
  return Math.min(MAX_RETRY_AFTER, Math.max(0, Math.round((date - Date.now()) / 1000)));
}

function errorFromBody(status, text, headers) {
  let type = "http_" + status, message = "";
  try {
    const error = JSON.parse(text).error || {};
    type = error.type || type;
    message = error.message || "";
  } catch (_) { /* not JSON: keep the status */ }
  return new ClaudeStreamError(type, message || `HTTP ${status}`, {
    status, retryAfter: retryAfterOf(headers), requestId: headers && (headers.get("request-id") || headers.get("x-request-id")),
  });
}

export class ClaudeStream {
  constructor(url, options) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.text = "";
    this.thinking = "";
    this.streamId = null;
    this.lastEventId = null;
    this.usage = null;
    this.stopReason = null;
    this.error = null;
    // connecting | streaming | reconnecting | stopping | done | error | aborted
    this.state = "connecting";
    this.cancelled = null; // after `abort()`: whether the server was told to stop (or had nothing to stop)
    this._applied = 0; // highest event number applied (text is never applied twice)
    this._queue = [];
    this._waiters = [];
    this._attempt = 0;
    this._connection = null;
    this._timer = null;
    this._online = null; // the `online` listener while waiting for the network
    this._settle = null;
    this.finished = new Promise((resolve, reject) => { this._settle = { resolve, reject }; });
    this.finished.catch(() => {}); // errors also arrive as events; no unhandled rejection
    queueMicrotask(() => this._connect(false));
  }

  /** Cancel the generation (not just this connection) and end the stream. */
  abort() {
    if (this._over() || this.state === "stopping") return;
    const connection = this._connection;
    if (!this.streamId && connection && connection.awaitingHead) {
      // Stopped before the response's head arrived: closing now would only detach a
      // resumable generation (it would run on for the detach grace). Let the head come,
      // cancel the stream it names, then close; but never wait for it longer than
      // `stopTimeoutMs`: a server that does not answer is given up on locally.
      this._connection = null; // not closed by `_close()`
      this._close();
      this.state = "stopping";
      this._emit({ type: "stopping" });
      const ms = Math.max(0, Number(this.options.stopTimeoutMs) || 0);
      const giveUp = setTimeout(() => {
        connection.onHead = null;
        connection.close();
        this._stopped(false);
      }, ms);
      connection.onHead = (id) => {
        clearTimeout(giveUp);
        if (id) this._cancel(id);
        connection.close();
        this._stopped(true); // the head came: cancelled, or nothing was started
      };
      return;
    }
    if (this.streamId) this._cancel(this.streamId);
    this._close();
    this._stopped(true);
  }

  /** The end of an `abort()`: `cancelled` false when the server never answered in time. */
  _stopped(cancelled) {
    if (this._over()) return;
    this.cancelled = cancelled;
    this.state = "aborted";
    this._emit({ type: "aborted", cancelled });
    this._end();
  }

  /** DELETE <route>/<stream id>, with the same credentials and headers as the stream:
   *  only the identity that started it may cancel it. A GET's token in its URL
   *  (`?access_token=`, `tokenParam`) is taken on a GET only, so the cancel sends it as
   *  `Authorization: Bearer` unless `headers` has one. */
  _cancel(id) {
    const headers = { ...(this.options.headers || {}) };
    const param = this.options.tokenParam;
    if (this.options.method === "GET" && param && !Object.keys(headers).some((k) => k.toLowerCase() === "authorization")) {
      const token = new URL(this.url, globalThis.location ? globalThis.location.href : undefined).searchParams.get(param);
      if (token) headers.authorization = "Bearer " + token;
    }
    const init = { method: "DELETE", credentials: this._credentials(), headers };
    fetch(this._routeUrl() + "/" + encodeURIComponent(id), init).catch(() => {});
  }

  [Symbol.asyncIterator]() {
    return {
      next: () => {
        if (this._queue.length) return Promise.resolve({ value: this._queue.shift(), done: false });
        if (this._ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => this._waiters.push(resolve));
      },
      return: () => { if (!this._over()) this.abort(); return Promise.resolve({ value: undefined, done: true }); },
    };
  }

  // ------------------------------------------------------------------ connections

  _routeUrl() {
    const u = new URL(this.url, globalThis.location ? globalThis.location.href : undefined);
    u.search = ""; u.hash = "";
    return u.href.replace(/\/$/, "");
  }

  /** The credentials mode of every request of this stream: in GET mode an `EventSource`'s
   *  (cookies cross-origin only with "include", same-origin ones always), so a resume or a
   *  cancel goes out as the same identity as the stream it continues. */
  _credentials() {
    if (this.options.method !== "GET") return this.options.credentials;
    return this.options.credentials === "include" ? "include" : "same-origin";
  }

  /** A GET resume's URL: the stream's own, `last_event_id` added to its query (before any
   *  `#fragment`, which is never sent: after it, the id would be lost). */
  _resumeUrl() {
    const u = new URL(this.url, globalThis.location ? globalThis.location.href : undefined);
    const param = "last_event_id=" + encodeURIComponent(this.lastEventId);
    u.search = u.search.length > 1 ? u.search + "&" + param : param;
    u.hash = "";
    return u.href;
  }

  _connect(resuming) {
    if (this._over()) return;
    this.state = resuming ? "reconnecting" : "connecting";
    this._feedDog();
    this._openFetch(resuming);
  }

  async _openFetch(resuming) {
    const controller = new AbortController();
    // `awaitingHead` until the response's head arrives; `onHead` is set by an `abort()`
    // made meanwhile, and gets the stream id the head names.
    const connection = { close: () => controller.abort(), awaitingHead: true, onHead: null };
    this._connection = connection;
    const get = this.options.method === "GET";
    let init;
    if (get) {
      // What an `EventSource` sends (a simple request: no preflight, no custom header), but
      // read by `fetch`, which sees the head: the stream id of `Sidecar-Stream-Id` (so a
      // cut before the first event resumes), and a refusal's status and JSON.
      init = [resuming ? this._resumeUrl() : this.url, { method: "GET", headers: { accept: "text/event-stream" } }];
    } else {
      const headers = { "content-type": "application/json", accept: "text/event-stream", ...(this.options.headers || {}) };
      if (resuming) headers["last-event-id"] = this.lastEventId;
      init = [this.url, { method: "POST", headers, body: JSON.stringify(this.options.body || {}) }];
    }
    let response;
    try {
      response = await fetch(init[0], {
        ...init[1], credentials: this._credentials(), signal: controller.signal, cache: "no-store",
      });
    } catch (error) {
      connection.awaitingHead = false;
      if (connection.onHead) return connection.onHead(null); // stopping: nothing came
      if (this._connection !== connection) return;
      if (resuming) return this._lost("network");
      // Refused by CORS, unreachable, or offline: nothing was generated, nothing to resume.
      return this._fail(new ClaudeStreamError("connection_error", "the stream could not be opened (refused by CORS, offline or unreachable)"));
    }
    connection.awaitingHead = false;
    if (connection.onHead) return connection.onHead(response.ok && response.headers.get("sidecar-stream-id"));
    if (this._connection !== connection) return;
    // The stream is gone (expired, finished, cancelled or unknown here): a GET's answer is
    // 204, a POST's a JSON 404 `resume_expired`. Both are the one documented type.
    if (resuming && (response.status === 204 || response.status === 404)) {
      const text = response.status === 404 ? await response.text().catch(() => "") : "";
      if (this._connection !== connection) return;
      const { message, requestId } = errorFromBody(response.status, text, response.headers);
      return this._fail(new ClaudeStreamError("resume_unavailable", text ? message : "the answer can no longer be resumed",
                                              { status: response.status, requestId }));
    }
    if (resuming && (response.status >= 500 || response.status === 429 || response.status === 408)) {
      // A replica restarting or busy: the stream may still be there.
      return this._lost("refused", retryAfterOf(response.headers));
    }
    if (!response.ok || !response.body) {
      const text = await response.text().catch(() => "");
      return this._fail(errorFromBody(response.status, text, response.headers));
    }
    this.streamId = response.headers.get("sidecar-stream-id") || this.streamId;
    this._opened(response.headers.get("x-request-id") || response.headers.get("request-id"));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SSEParser();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this._connection !== connection) return;
        if (done) break;
        this._feedDog();
        for (const message of parser.feed(decoder.decode(value, { stream: true }))) {
          this._message(message.ownId ? message.id : "", message.data);
          if (this._over()) { controller.abort(); return; }
          if (this._connection !== connection) return; // the message ended this connection
        }
      }
    } catch (_) {
      if (this._connection !== connection) return;
    }
    this._lost("closed");
  }

  _opened(requestId) {
    const first = this.state === "connecting";
    this.state = "streaming";
    this._emit({ type: first ? "open" : "resumed", streamId: this.streamId, requestId });
  }

  _close() {
    clearTimeout(this._timer);
    if (this._online) globalThis.removeEventListener("online", this._online);
    this._online = null;
    const connection = this._connection;
    this._connection = null;
    if (connection) connection.close();
  }

  _feedDog() {
    clearTimeout(this._timer);
    const ms = this.options.idleTimeoutMs;
    if (ms > 0 && !this._over()) this._timer = setTimeout(() => this._lost("idle"), ms);
  }

  /** Whether a lost connection can be resumed: the server sent a stream id, and the events
   * so far (if any) had ids `<stream id>:<n>`. */
  _resumable() {
    return Boolean(this.streamId) && (!this.lastEventId || streamIdOf(this.lastEventId) !== null);
  }

  /** The connection ended before `done`: resume when the stream is resumable, else fail.
   *  `retryAfter`: the seconds a refused resume's answer asked to wait. */
  _lost(reason, retryAfter = null) {
    if (this._over()) return;
    this._close();
    if (!this._resumable()) {
      const message = reason === "idle" ? "no data for " + this.options.idleTimeoutMs / 1000 + " s" : "the connection was lost";
      return this._fail(new ClaudeStreamError(reason === "idle" ? "timeout" : "connection_lost", message));
    }
    // Cut before the first event: the stream id came with the headers, and event 0 is
    // "nothing yet", so the whole stream can still be read.
    if (!this.lastEventId) this.lastEventId = this.streamId + ":0";
    // The browser knows it is offline: every reconnect would fail at once and spend the
    // retries in seconds while the server still holds the stream. Wait for `online`
    // instead (no attempt spent), then resume; `abort()` still ends it meanwhile. A try
    // every `retryMaxMs` too, also spending nothing, in case `onLine` is wrong.
    if (globalThis.navigator && navigator.onLine === false && globalThis.addEventListener) {
      this.state = "reconnecting";
      const online = () => { this._close(); this._connect(true); };
      this._online = online;
      globalThis.addEventListener("online", online, { once: true });
      this._timer = setTimeout(online, this.options.retryMaxMs);
      this._emit({ type: "reconnecting", attempt: this._attempt, delayMs: null, reason: "offline" });
      return;
    }
    if (this._attempt >= this.options.maxRetries) {
      return this._fail(new ClaudeStreamError("connection_lost", `the connection was lost; ${this._attempt} reconnects failed`));
    }
    const { retryBaseMs, retryMaxMs } = this.options;
    let delay = Math.min(retryMaxMs, retryBaseMs * 2 ** this._attempt) * (0.5 + Math.random() / 2);
    // Not before the server's `Retry-After` (the sidecar's resume store answers 503 with
    // one), within the backoff's cap.
    if (retryAfter !== null) delay = Math.max(delay, Math.min(retryMaxMs, retryAfter * 1000));
    this._attempt += 1;
    this.state = "reconnecting";
    this._emit({ type: "reconnecting", attempt: this._attempt, delayMs: Math.round(delay), reason });
    this._timer = setTimeout(() => this._connect(true), delay);
  }

  // ------------------------------------------------------------------ events

  /** One message; `id` is its own SSE id ("" when it carried none). */
  _message(id, data) {
    if (data === "[DONE]") return;
    const n = id ? eventNumber(id) : null;
    if (n !== null && n <= this._applied) return; // already applied before a reconnect
    let value;
    try { value = JSON.parse(data); } catch (_) { return; }
    // A `type` field is another route's event (Claude's own on the anthropic route, an AI
    // SDK chunk on the ui route), never the prompt route's: say so rather than wait for a
    // `done` that never comes and then retry a stream that was never cut.
    if (value && typeof value.type === "string") {
      return this._fail(new ClaudeStreamError("unsupported_stream",
        "this URL does not stream the prompt route's events (the module reads a prompt route)"));
    }
    if (id) {
      this.lastEventId = id;
      this.streamId = streamIdOf(id) || this.streamId;
    }
    if (n !== null) { this._applied = n; this._attempt = 0; }
    const o = this.options;
    if (typeof value.token === "string") {
      this.text += value.token;
      this._emit({ type: "token", text: value.token }, o.onToken, value.token, this.text);
    } else if (typeof value.thinking === "string") {
      this.thinking += value.thinking;
      this._emit({ type: "thinking", text: value.thinking }, o.onThinking, value.thinking);
    } else if (value.tool_use) {
      this._emit({ type: "tool_use", id: value.tool_use.id, name: value.tool_use.name }, o.onToolUse, value.tool_use);
    } else if (typeof value.tool_input === "string") {
      this._emit({ type: "tool_input", json: value.tool_input }, o.onToolInput, value.tool_input);
    } else if (value.done) {
      this.usage = value.usage || null;
      this.stopReason = value.stop_reason || null;
      this._close();
      this.state = "done";
      const result = { text: this.text, thinking: this.thinking, usage: this.usage, stopReason: this.stopReason };
      this._emit({ type: "done", usage: this.usage, stopReason: this.stopReason }, o.onDone, result);
      this._settle.resolve(result);
      this._end();
    } else if (value.error) {
      const type = value.error.type || "error";
      // The replica serving a resumed read is stopping (SIGTERM): it ends the read with
      // `shutting_down` and no id, and the stream goes on where it is produced, so this is
      // a lost connection: resume from the last event. With an id, `shutting_down` is the
      // stream's own numbered final event (its generation was stopped), like `stream_lost`:
      // there is nothing more to read anywhere.
      if (type === "shutting_down" && !id && this._resumable()) return this._lost("shutting_down");
      this._fail(new ClaudeStreamError(type, value.error.message || ""));
    }
  }

  _fail(error) {
    if (this._over()) return;
    this._close();
    this.error = error;
    this.state = "error";
    this._emit({ type: "error", error }, this.options.onError, error);
    this._settle.reject(error);
    this._end();
  }

  _over() { return this.state === "done" || this.state === "error" || this.state === "aborted"; }

  _emit(event, callback, ...args) {
    if (callback) this._call(callback, args);
    if (this.options.onEvent) this._call(this.options.onEvent, [event]);
    const waiter = this._waiters.shift();
    if (waiter) waiter({ value: event, done: false });
    else this._queue.push(event);
  }

  /** A callback of the page: one that throws breaks neither the stream nor the others
   *  (its error is reported, as an uncaught one would be). */
  _call(callback, args) {
    try {
      callback(...args);
    } catch (error) {
      setTimeout(() => { throw error; });
    }
  }

  _end() {
    clearTimeout(this._timer);
    if (this.state === "aborted") this._settle.resolve({ text: this.text, thinking: this.thinking, usage: null, stopReason: null, aborted: true, cancelled: this.cancelled });
    this._ended = true;
    for (const waiter of this._waiters.splice(0)) waiter({ value: undefined, done: true });
  }
}
