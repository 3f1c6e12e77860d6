// The demo page's script: also the worked example of claude-stream.js.
import { streamClaude } from "./claude-stream.js";

const route = document.querySelector("script[data-route]").dataset.route;
const $ = (id) => document.getElementById(id);
const form = $("form"), prompt = $("prompt"), token = $("token");
const send = $("send"), stop = $("stop"), status = $("status"), answer = $("answer");
let current = null;

/** An error as a sentence a person can act on (never raw JSON): every type the prompt
 *  route and the module report (docs/browser.md#errors), by what the person can do. */
export function describe(error) {
  const wait = error.retryAfter != null ? ` — try again in ${Math.ceil(error.retryAfter)} s` : " — try again shortly";
  switch (error.type) {
    case "rate_limited": return "Rate limited" + wait;
    case "prompt_rejected": return "This prompt was refused by policy.";
    case "unauthorized": return "Sign in again (the sidecar did not accept your credentials).";
    case "forbidden": return "You are not allowed to use this.";
    case "billing_error": return "Claude refused the call for billing reasons — tell whoever runs this service.";
    case "overloaded": return "Claude is busy" + wait;
    case "unavailable": return "The service is briefly unavailable" + wait;
    case "upstream_error": return "Claude could not be reached or its answer broke off — try again.";
    case "timeout": return "No answer for a while — try again.";
    case "idle_timeout": return "Claude stopped sending — try again. The text so far is kept.";
    case "shutting_down": return "The service is restarting — try again in a moment.";
    case "connection_lost": return "The connection was lost. The text so far is kept.";
    case "connection_error": return "Could not reach the sidecar.";
    case "unsupported_stream": return "This address does not stream prompt answers (it is not a prompt route).";
    case "client_stalled": return "This page stopped reading the answer, so it was cut off — try again.";
    case "stream_lost":
    case "resume_unavailable":
    case "resume_expired": return "The answer was interrupted and cannot be picked up again. The text so far is kept.";
    case "stream_abandoned": return "The answer was stopped while the connection was away. The text so far is kept.";
    case "cancelled": return "The answer was stopped (from another tab or window).";
    case "request_too_large": return "The prompt is too long.";
    case "unsupported_media_type": return "The request was not accepted (it was not sent as JSON).";
    case "not_found": return "This sidecar has no prompt route at this address.";
    case "invalid_request": return "The request was not accepted: " + error.message;
    default: return error.status ? `Something went wrong (HTTP ${error.status}).` : "Something went wrong.";
  }
}

/** Tokens per second after `tokens` tokens, the first at `firstMs` and the last at `nowMs`:
 *  n tokens span n - 1 intervals from the first one (null until there is an interval). */
export function tokensPerSecond(tokens, firstMs, nowMs) {
  const seconds = (nowMs - firstMs) / 1000;
  return tokens > 1 && seconds > 0 ? (tokens - 1) / seconds : null;
}

function busy(on) {
  send.disabled = on;
  stop.disabled = !on;
  answer.setAttribute("aria-busy", String(on));
}

function say(text, isError = false) {
  status.textContent = text;
  status.classList.toggle("error", isError);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!route) return say("No prompt route is configured on this sidecar.", true);
  const headers = token.value ? { authorization: "Bearer " + token.value } : {};
  answer.textContent = "";
  $("ttft").textContent = "–"; $("tps").textContent = "–"; $("count").textContent = "0";
  say("Waiting for Claude…");
  busy(true);
  const started = performance.now();
  current = streamClaude(route, { body: { prompt: prompt.value }, headers });
  try {
    await show(current, started);
  } finally {
    busy(false);
    current = null;
    answer.focus();
  }
});

async function show(stream, started) {
  let first = 0, tokens = 0;
  for await (const e of stream) {
    if (e.type === "token") {
      const now = performance.now();
      if (!first) { first = now; $("ttft").textContent = Math.round(first - started) + " ms"; say("Streaming…"); }
      tokens += 1;
      answer.append(e.text);
      $("count").textContent = String(tokens);
      const rate = tokensPerSecond(tokens, first, now);
      if (rate !== null) $("tps").textContent = rate.toFixed(1);
    } else if (e.type === "reconnecting" && e.reason === "offline") {
      say("You are offline — the answer continues when the network is back.");
    } else if (e.type === "reconnecting") {
      say(`Connection interrupted — reconnecting (attempt ${e.attempt})…`);
    } else if (e.type === "resumed") {
      say("Reconnected — streaming…");
    } else if (e.type === "done") {
      say(`Done (${e.stopReason || "complete"}).`);
    } else if (e.type === "error") {
      say(describe(e.error), true);
    } else if (e.type === "stopping") {
      say("Stopping…");
    } else if (e.type === "aborted" && !e.cancelled) {
      say("Stopped here. The service did not confirm in time; it stops the answer by itself shortly.");
    } else if (e.type === "aborted") {
      say("Stopped.");
    }
  }
}

// Ctrl+Enter (⌘+Enter) sends from the prompt box, as in most chat boxes.
prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !send.disabled) form.requestSubmit();
});

stop.addEventListener("click", () => {
  if (current) current.abort(); // the loop ends, focus moves to the answer
});
