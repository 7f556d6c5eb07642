/* The chat page of `ossrun serve`: a client of /v1/chat/completions like any other.
 *
 * It streams (fetch + a reader of the SSE stream, with stream_options.include_usage), shows
 * the reasoning folded and the answer as markdown (markdown.js), the server's tool runs
 * (`tool_run` deltas) and the model's tool calls. While a prompt is read the server sends SSE
 * comments `: prefill READ/TOTAL`, shown as progress; Stop aborts the fetch, and the server
 * cancels a reply whose client went away, prefill included. Conversations live in this
 * browser's localStorage and are exported and imported as the JSON the REPL's /save writes:
 * {"version": 1, "reasoning_effort": ..., "messages": [...]}.
 */
(function () {
  "use strict";

  const STORE = { key: "ossrun.apiKey", conversations: "ossrun.conversations", current: "ossrun.current", effort: "ossrun.effort" };
  const EFFORTS = ["low", "medium", "high"];
  const ROLES = ["system", "developer", "user", "assistant", "tool"];
  const FILE_VERSION = 1;
  const LONG_MESSAGE = 2000;  // characters of a message of the user shown before "Show all"
  const markdown = window.ossrunMarkdown;

  const $ = (id) => document.getElementById(id);
  const ui = {
    sidebar: $("sidebar"), toggle: $("toggle-sidebar"), list: $("conversations"), newChat: $("new-chat"),
    exportButton: $("export"), importButton: $("import"), importFile: $("import-file"), forgetKey: $("forget-key"),
    model: $("model-name"), context: $("context"), effort: $("effort"), messages: $("messages"), status: $("status"),
    form: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
    keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyError: $("key-error"),
  };

  const state = {
    model: null,  // the served model's id, from /v1/models
    contextLength: 0,
    conversations: loadConversations(),
    current: null,  // the conversation shown
    busy: null,  // {controller, conversation, message, view} while a reply streams
  };

  // -- storage ----------------------------------------------------------------------

  function loadConversations() {
    try {
      const list = JSON.parse(localStorage.getItem(STORE.conversations) || "[]");
      return Array.isArray(list) ? list.filter((c) => c && Array.isArray(c.messages)) : [];
    } catch (error) {
      return [];
    }
  }

  function persist() {
    const kept = state.conversations.filter((c) => c.messages.length);
    try {
      localStorage.setItem(STORE.conversations, JSON.stringify(kept, (key, value) => (key.startsWith("_") ? undefined : value)));
      if (state.current) localStorage.setItem(STORE.current, state.current.id);
    } catch (error) {
      say(`This browser could not keep the conversations: ${error.message}`);
    }
  }

  function newId() {
    return `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  }

  function newConversation(messages, effort) {
    const conversation = {
      id: newId(), title: "New chat", created: Date.now(), updated: Date.now(),
      effort: effort || localStorage.getItem(STORE.effort) || ui.effort.value || "medium", messages: messages || [], usage: null,
    };
    retitle(conversation);
    state.conversations.unshift(conversation);
    return conversation;
  }

  function retitle(conversation) {
    const first = conversation.messages.find((m) => m.role === "user" && m.content);
    if (first) conversation.title = first.content.replace(/\s+/g, " ").trim().slice(0, 60) || "New chat";
  }

  // -- talking to the server -----------------------------------------------------------

  function authorization() {
    const key = localStorage.getItem(STORE.key);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  async function errorOf(response) {
    const text = await response.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) return body.error.message;
    } catch (error) { /* not JSON: shown as it came */ }
    return text.trim() || `HTTP ${response.status} ${response.statusText}`;
  }

  async function connect() {
    say("Connecting…");
    let response;
    try {
      response = await fetch("/v1/models", { headers: authorization() });
    } catch (error) {
      say(`Cannot reach the server: ${error.message}`);
      return;
    }
    if (response.status === 401) {
      say("");
      askForKey(await errorOf(response));
      return;
    }
    if (!response.ok) {
      say(await errorOf(response));
      return;
    }
    const models = await response.json();
    const first = models.data && models.data[0];
    if (!first) {
      say("The server lists no model.");
      return;
    }
    response = await fetch(`/v1/models/${encodeURIComponent(first.id)}`, { headers: authorization() });
    const model = response.ok ? await response.json() : first;
    state.model = model.id;
    state.contextLength = model.context_length || 0;
    ui.model.textContent = model.id;
    document.title = `${model.id} · ossrun`;
    if (!localStorage.getItem(STORE.effort) && EFFORTS.includes(model.default_reasoning_effort)) {
      ui.effort.value = model.default_reasoning_effort;
      if (state.current && !state.current.messages.length) state.current.effort = model.default_reasoning_effort;
    }
    ui.forgetKey.hidden = !localStorage.getItem(STORE.key);
    say("");
    showContext();
    if (state.current && !state.current.messages.length) renderConversation();
  }

  function askForKey(message) {
    ui.keyError.textContent = message || "";
    ui.keyInput.value = "";
    if (!ui.keyDialog.open) ui.keyDialog.showModal();
    ui.keyInput.focus();
  }

  function requestMessages(messages) {
    const out = [];
    for (const m of messages) {
      if (m.role === "assistant") {
        const calls = (m.tool_calls || []).filter((c) => c && c.function);
        if (!m.content && !calls.length) continue;  // stopped before it said anything, or failed
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

  // Ask for the next assistant message of `conversation` (its last message is the user's).
  async function ask(conversation) {
    if (state.busy) return;
    const message = { role: "assistant", content: "", reasoning: "", thoughts: [], runs: [], tool_calls: [] };
    const request = {
      model: state.model, messages: requestMessages(conversation.messages), stream: true,
      stream_options: { include_usage: true }, reasoning_effort: conversation.effort,
    };
    conversation.messages.push(message);
    conversation.updated = Date.now();
    retitle(conversation);
    persist();
    renderList();
    const view = renderConversation().get(message);
    const controller = new AbortController();
    state.busy = { controller, conversation, message, view };
    setBusy(true);
    message._phase = "waiting";
    view.update(true);
    try {
      if (!state.model) throw new Error("not connected to the server yet");
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json", ...authorization() },
        body: JSON.stringify(request), signal: controller.signal,
      });
      if (!response.ok) {
        message.error = await errorOf(response);
        if (response.status === 401) askForKey(message.error);
      } else {
        await readStream(response, message, view);
      }
    } catch (error) {
      if (error.name === "AbortError") message.stopped = true;
      else message.error = `Cannot reach the server: ${error.message}`;
    } finally {
      endThinking(message);
      message._phase = null;
      state.busy = null;
      if (message.usage) conversation.usage = message.usage;
      conversation.updated = Date.now();
      persist();
      setBusy(false);
      if (state.current === conversation) {
        view.update(false);
        renderActions();
        showContext();
      }
    }
  }

  // The SSE stream of a Chat Completions request: data lines are chunks, `: prefill N/M` comments progress.
  async function readStream(response, message, view) {
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
      view.update(true);
    }
    if (!done && !message.error) message.error = "The stream ended before the reply was complete.";
  }

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
      message.runs[index] = { name: run.name, arguments: run.arguments || "" };
      message.thoughts.push({ run: index });
    } else if (message.runs[index]) {
      message.runs[index].output = run.output || "";
      message.runs[index].error = Boolean(run.error);
    }
  }

  function startThinking(message) {
    if (!message._thinkingSince && message.thought_seconds === undefined) message._thinkingSince = performance.now();
    message._phase = "thinking";
  }

  function endThinking(message) {
    if (message._thinkingSince) {
      message.thought_seconds = (performance.now() - message._thinkingSince) / 1000;
      message._thinkingSince = null;
    }
  }

  function stop() {
    if (state.busy) state.busy.controller.abort();
  }

  // -- showing a conversation --------------------------------------------------------

  function renderConversation() {
    const views = new Map();
    const conversation = state.current;
    ui.messages.replaceChildren();
    if (!conversation || !conversation.messages.length) {
      const empty = el("div", "empty");
      empty.append("Ask ", el("strong", "", state.model || "the model"), " anything.");
      ui.messages.append(empty);
    } else {
      conversation.messages.forEach((message, index) => {
        const view = viewOf(message, index);
        views.set(message, view);
        ui.messages.append(view.root);
      });
    }
    ui.effort.value = conversation ? conversation.effort : ui.effort.value;
    renderActions();
    renderList();
    showContext();
    scrollToEnd(true);
    return views;
  }

  function viewOf(message, index) {
    if (message.role === "assistant") return assistantView(message);
    const root = el("div", `message ${message.role === "user" ? "user" : message.role === "tool" ? "assistant" : "system"}`);
    root.dataset.index = String(index);
    if (message.role === "tool") {
      root.append(toolBlock(`← ${message.name || "tool"}`, null, message.content || "", false));
    } else if (message.role === "user") {
      root.setAttribute("aria-label", "You said");
      const bubble = el("div", "bubble", message.content);
      root.append(bubble);
      const lines = message.content.split("\n").length;
      if (message.content.length > LONG_MESSAGE || lines > 24) {  // folded: a pasted document should not fill the page
        bubble.classList.add("folded");
        const more = button(`Show all ${message.content.length.toLocaleString()} characters`, "Show the whole message", () => {
          bubble.classList.remove("folded");
          more.remove();
        });
        more.classList.add("more");
        root.append(more);
      }
      root.append(el("div", "actions"));
    } else {
      root.append(el("div", "bubble", `Instructions: ${message.content}`));
    }
    return { root, update() {} };
  }

  function assistantView(message) {
    const root = el("div", "message assistant");
    root.setAttribute("aria-label", "The model answered");
    const thought = el("details", "thought");
    const summary = el("summary");
    const reasoning = el("div", "reasoning");
    thought.append(summary, reasoning);
    const progress = el("div", "progress");
    const answer = el("div", "answer");
    const calls = el("div", "calls");
    const note = el("div", "note");
    const error = el("div", "error");
    error.setAttribute("role", "alert");
    root.append(thought, progress, calls, answer, error, note, el("div", "actions"));
    let shownThoughts = -1;
    let shownRuns = "";

    function update(live) {
      const stick = nearEnd();
      const hasThought = message.thoughts && message.thoughts.length;
      thought.hidden = !hasThought && !message.reasoning;
      thought.classList.toggle("thinking", live && message._phase === "thinking");
      summary.textContent = thoughtSummary(message, live);
      const runsKey = JSON.stringify(message.runs || []);
      const thoughts = hasThought ? message.thoughts : message.reasoning ? [{ text: message.reasoning }] : [];
      if (thoughts.length !== shownThoughts || runsKey !== shownRuns) {
        reasoning.replaceChildren(...thoughts.map((part) => (part.text !== undefined ? el("span", "", part.text) : runBlock(message.runs[part.run]))));
        shownThoughts = thoughts.length;
        shownRuns = runsKey;
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
      try {
        markdown.renderInto(answer, message.content || "");
      } catch (failure) {  // never lose an answer to the renderer: show it as plain text
        answer._markdownBlocks = null;
        answer.replaceChildren(el("p", "", message.content || ""));
        console.warn("markdown rendering failed:", failure);
      }
      calls.replaceChildren(...(message.tool_calls || []).filter(Boolean).map((call) =>
        toolBlock(`→ ${call.function.name}`, call.function.arguments, null, false)));
      error.textContent = message.error || "";
      error.hidden = !message.error;
      note.textContent = noteOf(message, live);
      note.hidden = !note.textContent;
      root.setAttribute("aria-busy", live ? "true" : "false");
      if (stick) scrollToEnd(false);
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
    return toolBlock(`${run.name}`, run.arguments, run.output === undefined ? null : run.output, run.error);
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

  // Edit on each message of the user, Regenerate on the last answer; none while a reply streams.
  function renderActions() {
    const conversation = state.current;
    if (!conversation) return;
    const rows = ui.messages.querySelectorAll(".message");
    const lastAssistant = conversation.messages.map((m) => m.role).lastIndexOf("assistant");
    rows.forEach((row, index) => {
      const actions = row.querySelector(".actions");
      if (!actions) return;
      actions.replaceChildren();
      const message = conversation.messages[index];
      if (state.busy || !message) return;
      if (message.role === "user") {
        actions.append(button("Edit", "Edit this message and send it again", () => edit(index)));
      } else if (message.role === "assistant" && index === lastAssistant && index === conversation.messages.length - 1) {
        actions.append(button("Regenerate", "Regenerate this answer", regenerate));
        if (message.content) actions.append(button("Copy", "Copy this answer as markdown", () => copy(message.content)));
      }
    });
  }

  function edit(index) {
    const conversation = state.current;
    const row = ui.messages.querySelectorAll(".message")[index];
    const original = conversation.messages[index].content;
    const box = el("div", "edit");
    const area = el("textarea");
    area.value = original;
    area.setAttribute("aria-label", "Edit your message");
    const actions = el("div", "actions");
    const save = button("Send", "Send the edited message", () => {
      const text = area.value.trim();
      if (!text || state.busy) return;
      conversation.messages = conversation.messages.slice(0, index);
      conversation.messages.push({ role: "user", content: text });
      ask(conversation);
    });
    save.classList.add("primary");
    actions.append(save, button("Cancel", "Cancel the edit", () => renderConversation()));
    area.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        save.click();
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        renderConversation();
      }
    });
    box.append(area, actions);
    row.replaceChildren(box);
    area.focus();
  }

  function regenerate() {
    const conversation = state.current;
    if (state.busy || !conversation) return;
    while (conversation.messages.length && conversation.messages[conversation.messages.length - 1].role !== "user") {
      conversation.messages.pop();
    }
    if (conversation.messages.length) ask(conversation);
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(() => say("Copied."));
  }

  function renderList() {
    ui.list.replaceChildren();
    const shown = state.conversations.filter((c) => c.messages.length || c === state.current);
    shown.sort((a, b) => b.updated - a.updated);
    for (const conversation of shown) {
      const item = el("li", conversation === state.current ? "current" : "");
      const open = button(conversation.title, `Open the conversation ${conversation.title}`, () => {
        if (state.busy) return;
        state.current = conversation;
        persist();
        renderConversation();
        closeSidebar();
      });
      open.classList.add("open");
      open.textContent = conversation.title;
      if (conversation === state.current) open.setAttribute("aria-current", "true");
      const remove = button("×", `Delete the conversation ${conversation.title}`, () => {
        if (state.busy && state.busy.conversation === conversation) return;
        if (!window.confirm(`Delete “${conversation.title}”?`)) return;
        state.conversations = state.conversations.filter((c) => c !== conversation);
        if (state.current === conversation) state.current = state.conversations[0] || newConversation();
        persist();
        renderConversation();
      });
      remove.classList.add("delete");
      item.append(open, remove);
      ui.list.append(item);
    }
  }

  function showContext() {
    const usage = state.current && state.current.usage;
    if (!state.contextLength) {
      ui.context.textContent = "";
      return;
    }
    const used = usage ? (usage.prompt_tokens || 0) + (usage.completion_tokens || 0) : 0;
    ui.context.textContent = `${used.toLocaleString()} / ${state.contextLength.toLocaleString()} tokens`;
    ui.context.setAttribute("aria-label", `Context used: ${used} of ${state.contextLength} tokens`);
  }

  function setBusy(busy) {
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.messages.setAttribute("aria-busy", busy ? "true" : "false");
    renderActions();
    if (busy) {
      if (!setBusy.timer) setBusy.timer = setInterval(() => state.busy && state.busy.view.update(true), 1000);
    } else {
      clearInterval(setBusy.timer);
      setBusy.timer = null;
    }
  }

  // -- export and import ---------------------------------------------------------------

  function exported(conversation) {
    const messages = [];
    for (const m of conversation.messages) {
      if (m.role === "assistant") {
        const calls = (m.tool_calls || []).filter(Boolean);
        if (!m.content && !calls.length) continue;
        const entry = { role: "assistant", content: m.content || "" };
        if (m.reasoning) entry.reasoning = m.reasoning;
        if (calls.length) entry.tool_calls = calls.map((c) => ({ id: c.id, type: "function", function: { name: c.function.name, arguments: c.function.arguments } }));
        messages.push(entry);
      } else if (m.role === "tool") {
        const entry = { role: "tool", name: m.name, content: m.content };
        if (m.tool_call_id) entry.tool_call_id = m.tool_call_id;
        messages.push(entry);
      } else {
        messages.push({ role: m.role, content: m.content });
      }
    }
    return { version: FILE_VERSION, reasoning_effort: conversation.effort, messages };
  }

  function exportConversation() {
    const conversation = state.current;
    if (!conversation || !conversation.messages.length) {
      say("Nothing to export yet.");
      return;
    }
    const text = `${JSON.stringify(exported(conversation), null, 2)}\n`;
    const link = el("a");
    link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    const slug = conversation.title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40) || "chat";
    link.download = `${slug}.json`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    say(`Exported “${conversation.title}”.`);
  }

  // A file /save wrote (or a bare list of messages), checked as `ossrun chat`'s /load checks it.
  function imported(data) {
    if (Array.isArray(data)) data = { messages: data };
    if (!data || typeof data !== "object" || !Array.isArray(data.messages)) throw new Error('expected {"messages": [...]} or a list of messages');
    const effort = data.reasoning_effort === undefined ? "medium" : data.reasoning_effort;
    if (!EFFORTS.includes(effort)) throw new Error(`unknown reasoning_effort ${JSON.stringify(effort)}: use low, medium or high`);
    const messages = data.messages.map((m, index) => {
      const where = `message ${index + 1}`;
      if (!m || typeof m !== "object") throw new Error(`${where} is not an object with a role and a content`);
      if (!ROLES.includes(m.role)) throw new Error(`${where} has an unknown role ${JSON.stringify(m.role)}: use system, user, assistant or tool`);
      for (const key of ["content", "reasoning", "name"]) {
        if (m[key] !== undefined && m[key] !== null && typeof m[key] !== "string") throw new Error(`${where}: ${key} must be a string`);
      }
      if (m.role !== "assistant" && typeof m.content !== "string") throw new Error(`${where} (${m.role}) has no text content`);
      if (m.tool_calls !== undefined && !Array.isArray(m.tool_calls)) throw new Error(`${where}: tool_calls must be a list`);
      if (m.role === "assistant") {
        return {
          role: "assistant", content: m.content || "", reasoning: m.reasoning || "", thoughts: m.reasoning ? [{ text: m.reasoning }] : [],
          runs: [], tool_calls: (m.tool_calls || []).filter((c) => c && c.function),
        };
      }
      if (m.role === "tool") return { role: "tool", name: m.name || "", content: m.content, tool_call_id: m.tool_call_id };
      return { role: m.role === "developer" ? "system" : m.role, content: m.content };
    });
    return { effort, messages };
  }

  async function importFile(file) {
    try {
      const { effort, messages } = imported(JSON.parse(await file.text()));
      if (!messages.length) throw new Error("it holds no messages");
      const conversation = newConversation(messages, effort);
      if (conversation.title === "New chat") conversation.title = file.name.replace(/\.json$/i, "");
      state.current = conversation;
      persist();
      renderConversation();
      say(`Imported “${conversation.title}”.`);
    } catch (error) {
      say(`Cannot import ${file.name}: ${error.message}`);
    }
  }

  // -- small things ----------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function button(text, label, action) {
    const node = el("button", "", text);
    node.type = "button";
    node.setAttribute("aria-label", label);
    node.addEventListener("click", action);
    return node;
  }

  function say(text) {
    ui.status.textContent = text;
  }

  function nearEnd() {
    const box = ui.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  }

  function scrollToEnd(force) {
    if (force || nearEnd()) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function fitInput() {
    ui.input.style.height = "auto";
    ui.input.style.height = `${ui.input.scrollHeight + 2}px`;
  }

  function closeSidebar() {
    ui.sidebar.classList.remove("open");
    ui.toggle.setAttribute("aria-expanded", "false");
  }

  // -- wiring ------------------------------------------------------------------------------

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.input.value.trim();
    if (!text || state.busy) return;
    const conversation = state.current || (state.current = newConversation());
    conversation.effort = ui.effort.value;
    conversation.messages.push({ role: "user", content: text });
    ui.input.value = "";
    fitInput();
    say("");
    ask(conversation);
  });

  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });
  ui.input.addEventListener("input", fitInput);

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || ui.keyDialog.open) return;
    if (state.busy) {
      event.preventDefault();
      stop();
    } else if (ui.sidebar.classList.contains("open")) {
      closeSidebar();
      ui.toggle.focus();
    }
  });

  // On a phone the conversations cover the page: a tap beside them closes them.
  document.querySelector(".main").addEventListener("click", (event) => {
    if (ui.sidebar.classList.contains("open") && !ui.toggle.contains(event.target)) closeSidebar();
  });

  ui.stop.addEventListener("click", stop);

  ui.newChat.addEventListener("click", () => {
    if (state.busy) return;
    const empty = state.conversations.find((c) => !c.messages.length);
    state.current = empty || newConversation();
    state.current.effort = ui.effort.value;
    renderConversation();
    closeSidebar();
    ui.input.focus();
  });

  ui.effort.addEventListener("change", () => {
    localStorage.setItem(STORE.effort, ui.effort.value);
    if (state.current) {
      state.current.effort = ui.effort.value;
      persist();
    }
  });

  ui.exportButton.addEventListener("click", exportConversation);
  ui.importButton.addEventListener("click", () => ui.importFile.click());
  ui.importFile.addEventListener("change", () => {
    const file = ui.importFile.files && ui.importFile.files[0];
    if (file) importFile(file);
    ui.importFile.value = "";
  });

  ui.forgetKey.addEventListener("click", () => {
    localStorage.removeItem(STORE.key);
    ui.forgetKey.hidden = true;
    state.model = null;
    connect();
  });

  ui.keyDialog.addEventListener("cancel", () => say("This server needs an API key: reload the page to give it."));

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.keyInput.value.trim();
    if (!key) return;
    localStorage.setItem(STORE.key, key);
    ui.keyDialog.close();
    connect();
  });

  ui.toggle.addEventListener("click", () => {
    const open = !ui.sidebar.classList.contains("open");
    ui.sidebar.classList.toggle("open", open);
    ui.toggle.setAttribute("aria-expanded", String(open));
  });

  const savedEffort = localStorage.getItem(STORE.effort);
  if (EFFORTS.includes(savedEffort)) ui.effort.value = savedEffort;
  const lastId = localStorage.getItem(STORE.current);
  state.current = state.conversations.find((c) => c.id === lastId) || state.conversations[0] || newConversation();
  renderConversation();
  ui.input.focus();
  connect();
})();
