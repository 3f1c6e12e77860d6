// Types for claude-stream.js (served at <browser.path>/claude-stream.d.ts).

export interface Usage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens?: number;
  cache_read_input_tokens?: number;
}

export interface StreamResult {
  text: string;
  thinking: string;
  usage: Usage | null;
  stopReason: string | null;
  /** True when `abort()` ended the stream. */
  aborted?: boolean;
  /**
   * With `aborted`: true when the server was told to stop the generation (or had started
   * none); false when the stream was stopped before its response's head arrived and the
   * server did not answer within `stopTimeoutMs` (a generation it started then runs on
   * for its detach grace).
   */
  cancelled?: boolean | null;
}

/** `stopping`: `abort()` was called before the response's head arrived; it waits for the
 *  head (at most `stopTimeoutMs`) to cancel the stream it names, then ends as `aborted`. */
export type StreamState = "connecting" | "streaming" | "reconnecting" | "stopping" | "done" | "error" | "aborted";

export type StreamEvent =
  | { type: "open"; streamId: string | null; requestId: string | null }
  | { type: "resumed"; streamId: string | null; requestId: string | null }
  | { type: "token"; text: string }
  | { type: "thinking"; text: string }
  | { type: "tool_use"; id: string; name: string }
  | { type: "tool_input"; json: string }
  /** `delayMs` is null with reason `offline`: the resume waits for the browser's `online` event. */
  | { type: "reconnecting"; attempt: number; delayMs: number | null; reason: "idle" | "network" | "closed" | "refused" | "shutting_down" | "offline" }
  | { type: "done"; usage: Usage | null; stopReason: string | null }
  | { type: "error"; error: ClaudeStreamError }
  /** `abort()` was called before the response's head: `aborted` follows within `stopTimeoutMs`. */
  | { type: "stopping" }
  /** `cancelled`: false when the server did not answer within `stopTimeoutMs` (see StreamResult). */
  | { type: "aborted"; cancelled: boolean };

export interface StreamOptions {
  /**
   * POST (fetch, custom headers) or GET (the request an EventSource sends, no custom
   * headers and no preflight, read by fetch so that the response's head is seen: its
   * `Sidecar-Stream-Id`, a refusal's status; resumed by the same GET with
   * `?last_event_id=`; `body` must then be in the URL). Default POST.
   */
  method?: "POST" | "GET";
  /** The JSON body of a POST, e.g. `{ prompt: "Hello" }`. */
  body?: Record<string, unknown>;
  /**
   * Extra request headers, e.g. `{ authorization: "Bearer ..." }`: sent with a POST and its
   * resumes, and with the cancel (`DELETE`) of `abort()` in both modes (a GET stream's own
   * requests send none).
   */
  headers?: Record<string, string>;
  /**
   * GET mode: the query parameter carrying the JWT (the sidecar's `auth.jwt.query_param`).
   * The sidecar takes it on a GET only, so `abort()`'s cancel sends it as
   * `Authorization: Bearer` unless `headers` has an authorization. Default "access_token".
   */
  tokenParam?: string;
  /** fetch credentials (GET mode: "include", else "same-origin", as an EventSource's
   *  withCredentials). Default "same-origin". */
  credentials?: RequestCredentials;
  /** Silence after which the connection counts as lost (0: never). Default 30000. */
  idleTimeoutMs?: number;
  /**
   * `abort()` before the response's head arrived: how long to wait for the head (to cancel
   * the stream it names) before giving up locally, closing the request and ending as
   * `aborted` with `cancelled: false`. 0: close at once (a resumable generation is then
   * only detached). Default 5000.
   */
  stopTimeoutMs?: number;
  /** Consecutive reconnects before giving up. Default 5. */
  maxRetries?: number;
  /** Backoff: base * 2^attempt, capped, with jitter. Defaults 500 and 8000. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  onToken?: (token: string, text: string) => void;
  onThinking?: (thinking: string) => void;
  onToolUse?: (tool: { id: string; name: string }) => void;
  onToolInput?: (json: string) => void;
  onDone?: (result: StreamResult) => void;
  onError?: (error: ClaudeStreamError) => void;
  /** Every event, as the async iterator yields them. */
  onEvent?: (event: StreamEvent) => void;
}

/**
 * `type` is the server's error type (`rate_limited`, `unauthorized`, `prompt_rejected`,
 * `overloaded`, `idle_timeout`, `stream_lost`, `cancelled`...: the list is in the sidecar's
 * docs/browser.md) or the client's own (`connection_lost`, `connection_error`, `timeout`,
 * `resume_unavailable`, `unsupported_stream`, `http_<status>`).
 */
export class ClaudeStreamError extends Error {
  constructor(
    type: string,
    message?: string,
    details?: { status?: number | null; retryAfter?: number | null; requestId?: string | null },
  );
  readonly type: string;
  readonly status: number | null;
  /** Seconds to wait before trying again, from `retry-after`. */
  readonly retryAfter: number | null;
  readonly requestId: string | null;
}

export class ClaudeStream implements AsyncIterable<StreamEvent> {
  /** Starts the stream at once, as `streamClaude(url, options)` does. */
  constructor(url: string, options?: StreamOptions);
  readonly url: string;
  /** The text so far; it stays while the stream reconnects. */
  readonly text: string;
  readonly thinking: string;
  readonly state: StreamState;
  /** Set when the server makes the stream resumable. */
  readonly streamId: string | null;
  readonly lastEventId: string | null;
  readonly usage: Usage | null;
  readonly stopReason: string | null;
  readonly error: ClaudeStreamError | null;
  /** After `abort()`: whether the server was told to stop (false: it did not answer in time). */
  readonly cancelled: boolean | null;
  /** Resolves with the result (also after `abort()`), rejects with a `ClaudeStreamError`. */
  readonly finished: Promise<StreamResult>;
  /** Cancel the generation at the server (not only this connection) and end the stream
   *  (through `stopping` when the response's head has not arrived yet). */
  abort(): void;
  [Symbol.asyncIterator](): AsyncIterator<StreamEvent>;
}

export function streamClaude(url: string, options?: StreamOptions): ClaudeStream;

export class SSEParser {
  /** `id` is the last id seen (SSE rules); `ownId` whether this message carried one. */
  feed(text: string): Array<{ id: string; ownId: boolean; event: string; data: string }>;
}

export function eventNumber(id: string): number | null;
export function streamIdOf(id: string): string | null;
