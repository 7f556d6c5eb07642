// The conversations the page keeps in localStorage, and the file they are exported to and
// imported from: the JSON the REPL's /save writes, {"version": 1, "reasoning_effort": ...,
// "messages": [...]}, checked on import as `ossrun chat`'s /load checks it.
//
// A conversation: {id, title, created, updated, effort, messages, usage}. Messages of the user
// are {role, content}; the model's are {role: "assistant", content, reasoning, thoughts (the
// reasoning and the server's tool runs in order), runs, tool_calls, thought_seconds, usage,
// error, stopped, finish_reason}. Keys that start with "_" live only while a reply streams.

export const EFFORTS = ["low", "medium", "high"];
const ROLES = ["system", "developer", "user", "assistant", "tool"];
const FILE_VERSION = 1;
const STORE = { conversations: "ossrun.conversations", current: "ossrun.current", effort: "ossrun.effort", key: "ossrun.apiKey" };

export function loadConversations() {
  try {
    const list = JSON.parse(localStorage.getItem(STORE.conversations) || "[]");
    return Array.isArray(list) ? list.filter((c) => c && Array.isArray(c.messages)) : [];
  } catch (error) {
    return [];
  }
}

// Keep the conversations that have messages; throws when the browser refuses (storage full).
export function saveConversations(conversations, current) {
  const kept = conversations.filter((c) => c.messages.length);
  localStorage.setItem(STORE.conversations, JSON.stringify(kept, (key, value) => (key.startsWith("_") ? undefined : value)));
  if (current) localStorage.setItem(STORE.current, current.id);
}

export function currentId() {
  return localStorage.getItem(STORE.current);
}

export function savedEffort() {
  const effort = localStorage.getItem(STORE.effort);
  return EFFORTS.includes(effort) ? effort : null;
}

export function saveEffort(effort) {
  localStorage.setItem(STORE.effort, effort);
}

export function apiKey() {
  return localStorage.getItem(STORE.key);
}

export function saveApiKey(key) {
  if (key) localStorage.setItem(STORE.key, key);
  else localStorage.removeItem(STORE.key);
}

export function newConversation(messages, effort) {
  const conversation = {
    id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`, title: "New chat",
    created: Date.now(), updated: Date.now(), effort, messages: messages || [], usage: null,
  };
  retitle(conversation);
  return conversation;
}

// The title is the start of the first question.
export function retitle(conversation) {
  const first = conversation.messages.find((m) => m.role === "user" && m.content);
  if (first) conversation.title = first.content.replace(/\s+/g, " ").trim().slice(0, 60) || "New chat";
}

// A conversation as /save writes it: replies that said nothing (stopped or failed) left out.
export function exported(conversation) {
  const messages = [];
  for (const m of conversation.messages) {
    if (m.role === "assistant") {
      const calls = (m.tool_calls || []).filter(Boolean);
      if (!m.content && !calls.length) continue;
      const entry = { role: "assistant", content: m.content || "" };
      if (m.reasoning) entry.reasoning = m.reasoning;
      if (calls.length) {
        entry.tool_calls = calls.map((c) => ({ id: c.id, type: "function", function: { name: c.function.name, arguments: c.function.arguments } }));
      }
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

// {effort, messages} of a file /save wrote (or a bare list of messages); an Error saying what is wrong.
export function imported(data) {
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
