// How each message looks: a view is {root, update(live)}; an answer's view is updated as its
// reply streams. Text goes in as text (textContent), the answer through markdown.js.

import { renderInto } from "./markdown.js";

const LONG_MESSAGE = 2000;  // characters of a message of the user shown before "Show all"

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

export function button(text, label, action) {
  const node = el("button", "", text);
  node.type = "button";
  node.setAttribute("aria-label", label);
  node.addEventListener("click", action);
  return node;
}

// Each view ends with an empty ".actions" row that the page fills (Edit, Regenerate).
export function viewOf(message) {
  if (message.role === "assistant") return assistantView(message);
  if (message.role === "tool") {
    const root = el("div", "message assistant");
    root.append(toolBlock(`← ${message.name || "tool"}`, null, message.content || "", false));
    return { root, update() {} };
  }
  if (message.role !== "user") {
    const root = el("div", "message system");
    root.append(el("div", "bubble", `Instructions: ${message.content}`));
    return { root, update() {} };
  }
  const root = el("div", "message user");
  root.setAttribute("aria-label", "You said");
  const bubble = el("div", "bubble", message.content);
  root.append(bubble);
  if (message.content.length > LONG_MESSAGE || message.content.split("\n").length > 24) {
    bubble.classList.add("folded");  // a pasted document should not fill the page
    const more = button(`Show all ${message.content.length.toLocaleString()} characters`, "Show the whole message", () => {
      bubble.classList.remove("folded");
      more.remove();
    });
    more.classList.add("more");
    root.append(more);
  }
  root.append(el("div", "actions"));
  return { root, update() {} };
}

// The model's message: the reasoning folded (with the server's tool runs in it), the prompt's
// progress while it is read, the tool calls, the answer, an error as the server wrote it, a note.
function assistantView(message) {
  const root = el("div", "message assistant");
  root.setAttribute("aria-label", "The model answered");
  const thought = el("details", "thought");
  const summary = el("summary");
  const reasoning = el("div", "reasoning");
  thought.append(summary, reasoning);
  const progress = el("div", "progress");
  const calls = el("div", "calls");
  const answer = el("div", "answer");
  const note = el("div", "note");
  const error = el("div", "error");
  error.setAttribute("role", "alert");
  root.append(thought, progress, calls, answer, error, note, el("div", "actions"));
  let shownThoughts = -1;
  let shownRuns = "";

  function update(live) {
    const thoughts = message.thoughts && message.thoughts.length ? message.thoughts : message.reasoning ? [{ text: message.reasoning }] : [];
    thought.hidden = !thoughts.length;
    thought.classList.toggle("thinking", live && message._phase === "thinking");
    summary.textContent = thoughtSummary(message, live);
    const runs = JSON.stringify(message.runs || []);
    if (thoughts.length !== shownThoughts || runs !== shownRuns) {
      reasoning.replaceChildren(...thoughts.map((part) => (part.text !== undefined ? el("span", "", part.text) : runBlock(message.runs[part.run]))));
      shownThoughts = thoughts.length;
      shownRuns = runs;
    } else if (thoughts.length && thoughts[thoughts.length - 1].text !== undefined) {
      reasoning.lastChild.textContent = thoughts[thoughts.length - 1].text;
    }
    progress.replaceChildren();
    if (live && message._phase === "waiting") progress.append("Waiting for the model…");
    if (live && message._phase === "prefill" && message._prefill) {
      const [read, total] = message._prefill;
      const bar = el("progress");
      bar.max = total;
      bar.value = read;
      bar.setAttribute("aria-label", "Prompt read");
      progress.append(bar, `Reading the prompt: ${read.toLocaleString()} of ${total.toLocaleString()} tokens`);
    }
    progress.hidden = !progress.childNodes.length;
    calls.replaceChildren(...(message.tool_calls || []).filter(Boolean).map((call) =>
      toolBlock(`→ ${call.function.name}`, call.function.arguments, null, false)));
    try {
      renderInto(answer, message.content || "");
    } catch (failure) {  // never lose an answer to the renderer: show it as plain text
      answer._markdownBlocks = null;
      answer.replaceChildren(el("p", "", message.content || ""));
      console.warn("markdown rendering failed:", failure);
    }
    error.textContent = message.error || "";
    error.hidden = !message.error;
    note.textContent = noteOf(message, live);
    note.hidden = !note.textContent;
    root.setAttribute("aria-busy", live ? "true" : "false");
  }

  update(false);
  return { root, update };
}

function thoughtSummary(message, live) {
  const runs = (message.runs || []).filter(Boolean);
  const ran = runs.length ? ` · ${runs.length === 1 ? `ran ${runs[0].name}` : `${runs.length} tool runs`}` : "";
  if (live && message._thinkingSince) return `Thinking… ${Math.floor((performance.now() - message._thinkingSince) / 1000)} s${ran}`;
  if (message.thought_seconds !== undefined) return `Thought for ${seconds(message.thought_seconds)}${ran}`;
  return `Reasoning${ran}`;
}

function seconds(value) {
  return value < 10 ? `${value.toFixed(1)} s` : `${Math.round(value)} s`;
}

function noteOf(message, live) {
  if (live) return "";
  if (message.stopped) return message.content || message.reasoning ? "Stopped." : "Stopped before the model answered.";
  if (message.finish_reason === "length") return "The reply reached its token limit.";
  if (message.finish_reason === "tool_calls") return "The model called a tool that this page does not run.";
  return "";
}

function runBlock(run) {
  if (!run) return el("span");
  const title = run.server ? `MCP ${run.server}: ${run.name}` : run.name;  // python, or an MCP server's tool
  return toolBlock(title, run.arguments, run.output === undefined ? null : run.output, run.error);
}

function toolBlock(title, code, output, failed) {
  const block = el("div", "tool");
  block.setAttribute("role", "group");
  block.setAttribute("aria-label", title.replace(/^[→←] /, "Tool "));
  block.append(el("div", "tool-head", title));
  if (code !== null && code !== undefined) block.append(el("pre", "", code));
  if (output !== null && output !== undefined) block.append(el("pre", `output${failed ? " failed" : ""}`, output || "(no output)"));
  return block;
}
