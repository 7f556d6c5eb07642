// The page as a client of POST /v1/chat/completions: the request it sends, and the SSE stream
// it reads into the model's message as it comes.
//
// Data lines are Chat Completions chunks: `reasoning_content` (else `reasoning`), `content`,
// `tool_calls` (merged by index), the server's own tool runs in `tool_run` (by index: name and
// arguments, then output and error), `finish_reason`, the usage at the end, or an `error`.
// Comments `: prefill READ/TOTAL` say how far the server has read the prompt.

// The conversation as the API takes it: replies that said nothing (stopped, failed) left out.
export function requestMessages(messages) {
  const out = [];
  for (const m of messages) {
    if (m.role === "assistant") {
      const calls = (m.tool_calls || []).filter((c) => c && c.function);
      if (!m.content && !calls.length) continue;
      const entry = { role: "assistant", content: m.content || "" };
      if (calls.length) {
        entry.tool_calls = calls.map((c) => ({ id: c.id, type: "function", function: { name: c.function.name, arguments: c.function.arguments || "" } }));
      }
      out.push(entry);
    } else if (m.role === "tool") {
      const entry = { role: "tool", content: m.content || "" };
      if (m.name) entry.name = m.name;
      if (m.tool_call_id) entry.tool_call_id = m.tool_call_id;
      out.push(entry);
    } else {
      out.push({ role: m.role === "developer" ? "system" : m.role, content: m.content || "" });
    }
  }
  return out;
}

// The message of an error answer: OpenAI's error.message, else the body as it came.
export async function errorOf(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return body.error.message;
  } catch (error) { /* not JSON: shown as it came */ }
  return text.trim() || `HTTP ${response.status} ${response.statusText}`;
}

// Read the stream into `message`, calling `changed()` after each piece; ends at [DONE] or throws.
export async function readStream(response, message, changed) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let done = false;
  while (!done) {
    const { value, done: ended } = await reader.read();
    if (ended) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      if (handleEvent(event, message)) done = true;
    }
    changed();
  }
  if (!done && !message.error) message.error = "The stream ended before the reply was complete.";
}

// One SSE event into the message; true at [DONE].
function handleEvent(event, message) {
  const data = [];
  for (const line of event.split(/\r?\n/)) {
    if (line.startsWith(":")) {
      const progress = line.match(/^: ?prefill (\d+)\/(\d+)/);
      if (progress) {
        message._phase = "prefill";
        message._prefill = [Number(progress[1]), Number(progress[2])];
      }
    } else if (line.startsWith("data:")) {
      data.push(line.slice(5).replace(/^ /, ""));
    }
  }
  if (!data.length) return false;
  const text = data.join("\n");
  if (text === "[DONE]") return true;
  let chunk;
  try {
    chunk = JSON.parse(text);
  } catch (error) {
    return false;
  }
  if (chunk.error) {
    message.error = chunk.error.message || JSON.stringify(chunk.error);
    return false;
  }
  if (chunk.usage) message.usage = chunk.usage;
  const choice = chunk.choices && chunk.choices[0];
  if (!choice) return false;
  const delta = choice.delta || {};
  if (delta.tool_run) {
    addRun(message, delta.tool_run);
    message.reasoning += delta.reasoning_content || delta.reasoning || "";  // as other clients see it
  } else {
    const reasoning = delta.reasoning_content || delta.reasoning || "";
    if (reasoning) addThought(message, reasoning);
  }
  if (delta.content) {
    endThinking(message);
    message._phase = "answer";
    message.content += delta.content;
  }
  for (const call of delta.tool_calls || []) {
    const index = call.index || 0;
    const entry = message.tool_calls[index] || (message.tool_calls[index] = { id: call.id, type: "function", function: { name: "", arguments: "" } });
    if (call.id) entry.id = call.id;
    if (call.function && call.function.name) entry.function.name += call.function.name;
    if (call.function && call.function.arguments) entry.function.arguments += call.function.arguments;
  }
  if (choice.finish_reason) message.finish_reason = choice.finish_reason;
  return false;
}

function addThought(message, text) {
  startThinking(message);
  message.reasoning += text;
  const last = message.thoughts[message.thoughts.length - 1];
  if (last && last.text !== undefined) last.text += text;
  else message.thoughts.push({ text });
}

function addRun(message, run) {
  startThinking(message);
  const index = run.index || 0;
  if (run.name !== undefined) {
    message.runs[index] = { name: run.name, arguments: run.arguments || "", server: run.server };
    message.thoughts.push({ run: index });
  } else if (message.runs[index]) {
    message.runs[index].output = run.output || "";
    message.runs[index].error = Boolean(run.error);
  }
}

// The model thinks from its first reasoning (or tool run) until its first word of answer.
function startThinking(message) {
  if (!message._thinkingSince && message.thought_seconds === undefined) message._thinkingSince = performance.now();
  message._phase = "thinking";
}

export function endThinking(message) {
  if (message._thinkingSince) {
    message.thought_seconds = (performance.now() - message._thinkingSince) / 1000;
    message._thinkingSince = null;
  }
}
