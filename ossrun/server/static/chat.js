// The chat page of `ossrun serve`: a client of /v1/chat/completions like any other.
//
// This module holds the page together: the model it talks to (/v1/models), the conversation
// shown, sending (streamed, with the effort chosen), Stop (aborting the fetch: the server
// cancels a reply whose client went away, prefill included), regenerate, edit, new chat, the
// list of conversations, export and import, the API key. conversations.js keeps them in the
// browser, stream.js reads the replies, views.js shows the messages, markdown.js the answers.

import {
  EFFORTS, apiKey, currentId, exported, imported, loadConversations, newConversation, retitle, saveApiKey,
  saveConversations, saveEffort, savedEffort,
} from "./conversations.js";
import { endThinking, errorOf, readStream, requestMessages } from "./stream.js";
import { button, el, viewOf } from "./views.js";

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
  contextLength: 0,  // its context_length, from /v1/models/{id}
  conversations: loadConversations(),
  current: null,  // the conversation shown
  busy: null,  // {controller, conversation, message, view} while a reply streams
  timer: null,  // repaints the reply each second while it streams (the thinking time)
};

function authorization() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function start(messages, effort) {
  const conversation = newConversation(messages, effort || savedEffort() || ui.effort.value);
  state.conversations.unshift(conversation);
  return conversation;
}

function persist() {
  try {
    saveConversations(state.conversations, state.current);
  } catch (error) {
    say(`This browser could not keep the conversations: ${error.message}`);
  }
}

// -- the server ------------------------------------------------------------------------

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
  const first = ((await response.json()).data || [])[0];
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
  if (!savedEffort() && EFFORTS.includes(model.default_reasoning_effort)) {
    ui.effort.value = model.default_reasoning_effort;
    if (state.current && !state.current.messages.length) state.current.effort = model.default_reasoning_effort;
  }
  ui.forgetKey.hidden = !apiKey();
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

// Ask for the next message of the model in `conversation` (its last message is the user's).
async function ask(conversation) {
  if (state.busy) return;
  const message = { role: "assistant", content: "", reasoning: "", thoughts: [], runs: [], tool_calls: [] };
  const request = {  // `conversation`: with --tool python, its runs share one working directory
    model: state.model, messages: requestMessages(conversation.messages), stream: true,
    stream_options: { include_usage: true }, reasoning_effort: conversation.effort, conversation: conversation.id,
  };
  conversation.messages.push(message);
  conversation.updated = Date.now();
  retitle(conversation);
  persist();
  const view = renderConversation().get(message);
  const controller = new AbortController();
  state.busy = { controller, conversation, message, view };
  setBusy(true);
  message._phase = "waiting";
  repaint(view, true);
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
      await readStream(response, message, () => repaint(view, true));
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
      repaint(view, false);
      renderActions();
      showContext();
    }
  }
}

function stop() {
  if (state.busy) state.busy.controller.abort();
}

// -- the page --------------------------------------------------------------------------

function renderConversation() {
  const views = new Map();
  const conversation = state.current;
  ui.messages.replaceChildren();
  if (!conversation || !conversation.messages.length) {
    const empty = el("div", "empty");
    empty.append("Ask ", el("strong", "", state.model || "the model"), " anything.");
    ui.messages.append(empty);
  } else {
    for (const message of conversation.messages) {
      const view = viewOf(message);
      views.set(message, view);
      ui.messages.append(view.root);
    }
  }
  ui.effort.value = conversation ? conversation.effort : ui.effort.value;
  renderActions();
  renderList();
  showContext();
  ui.messages.scrollTop = ui.messages.scrollHeight;
  return views;
}

// A streaming reply grows: the page follows it unless the reader scrolled up.
function repaint(view, live) {
  const box = ui.messages;
  const following = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  view.update(live);
  if (following) box.scrollTop = box.scrollHeight;
}

// Edit on each message of the user, Regenerate and Copy on the last answer; none while a reply streams.
function renderActions() {
  const conversation = state.current;
  if (!conversation) return;
  const last = conversation.messages.length - 1;
  ui.messages.querySelectorAll(".message").forEach((row, index) => {
    const actions = row.querySelector(".actions");
    const message = conversation.messages[index];
    if (!actions || !message) return;
    actions.replaceChildren();
    if (state.busy) return;
    if (message.role === "user") {
      actions.append(button("Edit", "Edit this message and send it again", () => edit(index)));
    } else if (message.role === "assistant" && index === last) {
      actions.append(button("Regenerate", "Regenerate this answer", regenerate));
      if (message.content) actions.append(button("Copy", "Copy this answer as markdown", () => copy(message.content)));
    }
  });
}

function edit(index) {
  const conversation = state.current;
  const row = ui.messages.querySelectorAll(".message")[index];
  const area = el("textarea");
  area.value = conversation.messages[index].content;
  area.setAttribute("aria-label", "Edit your message");
  const send = button("Send", "Send the edited message", () => {
    const text = area.value.trim();
    if (!text || state.busy) return;
    conversation.messages = conversation.messages.slice(0, index);
    conversation.messages.push({ role: "user", content: text });
    ask(conversation);
  });
  send.classList.add("primary");
  const actions = el("div", "actions");
  actions.append(send, button("Cancel", "Cancel the edit", () => renderConversation()));
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send.click();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      renderConversation();
    }
  });
  const box = el("div", "edit");
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
    if (conversation === state.current) open.setAttribute("aria-current", "true");
    const remove = button("×", `Delete the conversation ${conversation.title}`, () => {
      if (state.busy && state.busy.conversation === conversation) return;
      if (!window.confirm(`Delete “${conversation.title}”?`)) return;
      state.conversations = state.conversations.filter((c) => c !== conversation);
      if (state.current === conversation) state.current = state.conversations[0] || start();
      persist();
      renderConversation();
    });
    remove.classList.add("delete");
    item.append(open, remove);
    ui.list.append(item);
  }
}

// The context this conversation used at its last reply (the usage), of the server's.
function showContext() {
  if (!state.contextLength) {
    ui.context.textContent = "";
    return;
  }
  const usage = state.current && state.current.usage;
  const used = usage ? (usage.prompt_tokens || 0) + (usage.completion_tokens || 0) : 0;
  ui.context.textContent = `${used.toLocaleString()} / ${state.contextLength.toLocaleString()} tokens`;
  ui.context.setAttribute("aria-label", `Context used: ${used} of ${state.contextLength} tokens`);
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.messages.setAttribute("aria-busy", busy ? "true" : "false");
  renderActions();
  clearInterval(state.timer);
  state.timer = busy ? setInterval(() => state.busy && repaint(state.busy.view, true), 1000) : null;
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

async function importFile(file) {
  try {
    const { effort, messages } = imported(JSON.parse(await file.text()));
    if (!messages.length) throw new Error("it holds no messages");
    const conversation = start(messages, effort);
    if (conversation.title === "New chat") conversation.title = file.name.replace(/\.json$/i, "");
    state.current = conversation;
    persist();
    renderConversation();
    say(`Imported “${conversation.title}”.`);
  } catch (error) {
    say(`Cannot import ${file.name}: ${error.message}`);
  }
}

function say(text) {
  ui.status.textContent = text;
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
  const conversation = state.current || (state.current = start());
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
  state.current = state.conversations.find((c) => !c.messages.length) || start();
  state.current.effort = ui.effort.value;
  renderConversation();
  closeSidebar();
  ui.input.focus();
});

ui.effort.addEventListener("change", () => {
  saveEffort(ui.effort.value);
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
  saveApiKey(null);
  ui.forgetKey.hidden = true;
  state.model = null;
  connect();
});

ui.keyDialog.addEventListener("cancel", () => say("This server needs an API key: reload the page to give it."));

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (!key) return;
  saveApiKey(key);
  ui.keyDialog.close();
  connect();
});

ui.toggle.addEventListener("click", () => {
  const open = !ui.sidebar.classList.contains("open");
  ui.sidebar.classList.toggle("open", open);
  ui.toggle.setAttribute("aria-expanded", String(open));
});

if (savedEffort()) ui.effort.value = savedEffort();
state.current = state.conversations.find((c) => c.id === currentId()) || state.conversations[0] || start();
renderConversation();
ui.input.focus();
connect();
