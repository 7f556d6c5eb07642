// A small markdown renderer for the chat page: the model's text becomes DOM nodes, never HTML.
//
// Every piece of text goes in through textContent or createTextNode, so whatever the model
// writes (<script>, <img onerror=...>, entities) shows as the characters it is. Links keep
// http, https and mailto targets only; images become links (the page loads nothing from
// elsewhere). Blocks: paragraphs, headings, fenced code, lists (nested, ordered, tasks),
// tables, block quotes, rules. Inline: code, emphasis, strong, strikethrough, links.
//
// render(text) gives a DocumentFragment. renderInto(element, text) updates an element in
// place while text grows: blocks whose source did not change keep their nodes, so a long
// answer streams without repainting what is already shown.

var FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
var HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
var RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
var QUOTE = /^ {0,3}> ?(.*)$/;
var ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*)|$)/;
var TABLE_RULE = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;
var SAFE_URL = /^(?:https?:\/\/|mailto:)/i;

function el(tag, className, text) {
  var node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function blank(line) {
  return /^\s*$/.test(line);
}

function indentOf(line) {
  return line.match(/^ */)[0].length;
}

// -- blocks ------------------------------------------------------------------

// Cut lines into blocks: {kind, lines (its source), ...}. Unclosed fences run to the end
// (a reply still streaming).
function blocks(lines) {
  var out = [];
  var i = 0;
  while (i < lines.length) {
    var line = lines[i];
    var start = i;
    var m;
    if (blank(line)) {
      i++;
      continue;
    }
    if ((m = line.match(FENCE))) {
      var fence = m[1];
      var body = [];
      i++;
      while (i < lines.length) {
        var close = lines[i].match(/^ {0,3}(`{3,}|~{3,})\s*$/);
        if (close && close[1][0] === fence[0] && close[1].length >= fence.length) {
          i++;
          break;
        }
        body.push(lines[i]);
        i++;
      }
      out.push({ kind: "code", lang: m[2], text: body.join("\n"), source: lines.slice(start, i) });
      continue;
    }
    if ((m = line.match(HEADING))) {
      out.push({ kind: "heading", level: m[1].length, text: m[2] || "", source: [line] });
      i++;
      continue;
    }
    if (RULE.test(line)) {
      out.push({ kind: "rule", source: [line] });
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      var quoted = [];
      while (i < lines.length && !blank(lines[i]) && (m = lines[i].match(QUOTE) || (quoted.length && [null, lines[i]]))) {
        quoted.push(m[1]);
        i++;
      }
      out.push({ kind: "quote", lines: quoted, source: lines.slice(start, i) });
      continue;
    }
    if (line.indexOf("|") >= 0 && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].indexOf("-") >= 0) {
      var header = cells(line);
      var align = cells(lines[i + 1]).map(function (cell) {
        var left = cell.charAt(0) === ":";
        var right = cell.charAt(cell.length - 1) === ":";
        return left && right ? "center" : right ? "right" : left ? "left" : "";
      });
      var rows = [];
      i += 2;
      while (i < lines.length && !blank(lines[i]) && lines[i].indexOf("|") >= 0) {
        rows.push(cells(lines[i]));
        i++;
      }
      out.push({ kind: "table", header: header, align: align, rows: rows, source: lines.slice(start, i) });
      continue;
    }
    if ((m = line.match(ITEM)) && !(RULE.test(line))) {
      i = list(lines, i, out);
      continue;
    }
    var para = [];
    while (i < lines.length && !blank(lines[i]) && !startsBlock(lines, i)) {
      para.push(lines[i]);
      i++;
    }
    if (!para.length) {  // a line that looks like a block start but is not one: keep it as text
      para.push(lines[i]);
      i++;
    }
    out.push({ kind: "paragraph", text: para.join("\n"), source: lines.slice(start, i) });
  }
  return out;
}

function startsBlock(lines, i) {
  var line = lines[i];
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line) ||
    (line.indexOf("|") >= 0 && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1]) && lines[i + 1].indexOf("-") >= 0);
}

function cells(line) {
  var text = line.trim();
  if (text.charAt(0) === "|") text = text.slice(1);
  if (text.charAt(text.length - 1) === "|" && text.charAt(text.length - 2) !== "\\") text = text.slice(0, -1);
  var parts = [];
  var current = "";
  for (var k = 0; k < text.length; k++) {
    var c = text.charAt(k);
    if (c === "\\" && text.charAt(k + 1) === "|") {
      current += "|";
      k++;
    } else if (c === "|") {
      parts.push(current.trim());
      current = "";
    } else {
      current += c;
    }
  }
  parts.push(current.trim());
  return parts;
}

// A list from lines[i]: its items, each with the lines that belong to it (dedented).
function list(lines, i, out) {
  var start = i;
  var first = lines[i].match(ITEM);
  var base = first[1].length;
  var ordered = /\d/.test(first[2]);
  var items = [];
  var loose = false;
  while (i < lines.length) {
    var line = lines[i];
    var m = line.match(ITEM);
    if (m && m[1].length === base && /\d/.test(m[2]) === ordered) {
      var width = m[1].length + m[2].length + 1;
      items.push({ number: ordered ? parseInt(m[2], 10) : null, lines: [m[3] || ""], width: width });
      i++;
      continue;
    }
    if (blank(line)) {
      // A blank line ends the list unless more of it follows (indented, or another item).
      var next = i + 1;
      while (next < lines.length && blank(lines[next])) next++;
      if (next < lines.length && (indentOf(lines[next]) > base ||
          ((m = lines[next].match(ITEM)) && m[1].length === base && /\d/.test(m[2]) === ordered))) {
        loose = loose || !(indentOf(lines[next]) > base);
        items[items.length - 1].lines.push("");
        i++;
        continue;
      }
      break;
    }
    if (indentOf(line) > base) {
      var item = items[items.length - 1];
      item.lines.push(line.slice(Math.min(indentOf(line), Math.max(item.width, base + 2))));
      i++;
      continue;
    }
    if (m || startsBlock(lines, i)) break;
    items[items.length - 1].lines.push(line);  // a lazy continuation of the item's text
    i++;
  }
  out.push({ kind: "list", ordered: ordered, start: items[0].number, items: items, loose: loose, source: lines.slice(start, i) });
  return i;
}

function renderBlock(block) {
  var node;
  switch (block.kind) {
    case "code":
      node = el("div", "code-block");
      var bar = el("div", "code-bar");
      bar.appendChild(el("span", "code-lang", block.lang || "text"));
      if (navigator.clipboard && window.isSecureContext) {
        var copy = el("button", "copy", "Copy");
        copy.type = "button";
        copy.setAttribute("aria-label", "Copy code");
        copy.addEventListener("click", function () {
          navigator.clipboard.writeText(block.text).then(function () {
            copy.textContent = "Copied";
            setTimeout(function () { copy.textContent = "Copy"; }, 1500);
          });
        });
        bar.appendChild(copy);
      }
      node.appendChild(bar);
      var pre = el("pre");
      var code = el("code", block.lang ? "language-" + block.lang.replace(/[^\w-]/g, "") : "", block.text);
      pre.appendChild(code);
      node.appendChild(pre);
      return node;
    case "heading":
      node = el("h" + Math.min(block.level + 2, 6));
      appendInline(node, block.text);
      return node;
    case "rule":
      return el("hr");
    case "quote":
      node = el("blockquote");
      node.appendChild(render(block.lines.join("\n")));
      return node;
    case "table":
      node = el("div", "table-wrap");
      var table = el("table");
      var head = el("thead");
      var row = el("tr");
      block.header.forEach(function (text, k) {
        var th = el("th");
        if (block.align[k]) th.className = "align-" + block.align[k];
        appendInline(th, text);
        row.appendChild(th);
      });
      head.appendChild(row);
      table.appendChild(head);
      var body = el("tbody");
      block.rows.forEach(function (cellsOfRow) {
        var tr = el("tr");
        for (var k = 0; k < block.header.length; k++) {
          var td = el("td");
          if (block.align[k]) td.className = "align-" + block.align[k];
          appendInline(td, cellsOfRow[k] || "");
          tr.appendChild(td);
        }
        body.appendChild(tr);
      });
      table.appendChild(body);
      node.appendChild(table);
      return node;
    case "list":
      node = el(block.ordered ? "ol" : "ul");
      if (block.ordered && block.start !== null && block.start !== 1) node.setAttribute("start", String(block.start));
      block.items.forEach(function (item) {
        var li = el("li");
        var lines = item.lines.slice();
        var task = !block.ordered && lines[0].match(/^\[([ xX])\]\s+(.*)$/);
        if (task) {
          var box = el("input");
          box.type = "checkbox";
          box.disabled = true;
          box.checked = task[1] !== " ";
          li.className = "task";
          li.appendChild(box);
          lines[0] = task[2];
        }
        var inner = blocks(lines);
        if (!block.loose && inner.length && inner[0].kind === "paragraph") {
          appendInline(li, inner[0].text);  // a tight list: no paragraph around the item's text
          inner = inner.slice(1);
        }
        inner.forEach(function (b) { li.appendChild(renderBlock(b)); });
        node.appendChild(li);
      });
      return node;
    default:
      node = el("p");
      appendInline(node, block.text);
      return node;
  }
}

// -- inline ------------------------------------------------------------------

var INLINE = new RegExp([
  "(`+)([\\s\\S]*?[^`])\\1(?!`)",               // 1,2 code span
  "!?\\[((?:[^\\[\\]]|\\[[^\\]]*\\])*)\\]\\(\\s*<?([^\\s()<>]*(?:\\([^\\s()]*\\)[^\\s()<>]*)*)>?(?:\\s+\"[^\"]*\")?\\s*\\)", // 3,4 link
  "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*",          // 5 strong
  "__(?=\\S)([\\s\\S]*?\\S)__(?!\\w)",            // 6 strong
  "~~(?=\\S)([\\s\\S]*?\\S)~~",                  // 7 strikethrough
  "\\*(?=[^\\s*])([\\s\\S]*?[^\\s*])\\*(?!\\*)",   // 8 emphasis
  "(?:^|(?<=[^\\w]))_(?=[^\\s_])([\\s\\S]*?[^\\s_])_(?!\\w)", // 9 emphasis
  "<((?:https?:\\/\\/|mailto:)[^\\s<>]+)>",       // 10 autolink
  "(https?:\\/\\/[^\\s<>\"]*[^\\s<>\".,;:!?')\\]])", // 11 bare URL
  "\\\\([\\\\`*_{}\\[\\]()#+\\-.!|~<>])",          // 12 escaped character
  "( {2,}|\\\\)?\\n"                               // 13 line break
].join("|"), "g");

// `inLink`: the text of a link, where URLs stay text (a link holds no link).
function appendInline(parent, text, inLink) {
  var regex = new RegExp(INLINE.source, "g");
  var position = 0;
  var m;
  while ((m = regex.exec(text)) !== null) {
    if (m.index > position) parent.appendChild(document.createTextNode(text.slice(position, m.index)));
    position = m.index + m[0].length;
    if (m[2] !== undefined) {
      var code = m[2];
      if (/^ .* $/.test(code)) code = code.slice(1, -1);
      parent.appendChild(el("code", "", code));
    } else if (m[4] !== undefined || m[3] !== undefined) {
      parent.appendChild(inLink ? document.createTextNode(m[0]) : link(m[3] || "", m[4] || "", m[0]));
    } else if (m[5] !== undefined || m[6] !== undefined) {
      var strong = el("strong");
      appendInline(strong, m[5] !== undefined ? m[5] : m[6], inLink);
      parent.appendChild(strong);
    } else if (m[7] !== undefined) {
      var del = el("del");
      appendInline(del, m[7], inLink);
      parent.appendChild(del);
    } else if (m[8] !== undefined || m[9] !== undefined) {
      var em = el("em");
      appendInline(em, m[8] !== undefined ? m[8] : m[9], inLink);
      parent.appendChild(em);
    } else if (m[10] !== undefined || m[11] !== undefined) {
      var url = m[10] !== undefined ? m[10] : m[11];
      parent.appendChild(inLink ? document.createTextNode(m[0]) : link(url, url, m[0]));
    } else if (m[12] !== undefined) {
      parent.appendChild(document.createTextNode(m[12]));
    } else {
      parent.appendChild(el("br"));
    }
  }
  if (position < text.length) parent.appendChild(document.createTextNode(text.slice(position)));
}

// A link the page may follow: http(s) or mailto only, opened apart, telling nothing of the page.
function link(text, url, source) {
  if (!SAFE_URL.test(url)) return document.createTextNode(source);
  var a = el("a");
  a.href = url;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  appendInline(a, text || url, true);
  return a;
}

// -- entry points --------------------------------------------------------------

export function render(text) {
  var fragment = document.createDocumentFragment();
  blocks(String(text).replace(/\r\n?/g, "\n").split("\n")).forEach(function (block) {
    fragment.appendChild(renderBlock(block));
  });
  return fragment;
}

export function renderInto(element, text) {
  var parsed = blocks(String(text).replace(/\r\n?/g, "\n").split("\n"));
  var previous = element._markdownBlocks || [];
  var kept = 0;
  while (kept < parsed.length && kept < previous.length && kept < parsed.length - 1 &&
         previous[kept].key === parsed[kept].source.join("\n") + "\u0000" + parsed[kept].kind) {
    kept++;
  }
  while (previous.length > kept) {
    var gone = previous.pop();
    if (gone.node.parentNode === element) element.removeChild(gone.node);
  }
  for (var k = kept; k < parsed.length; k++) {
    var node = renderBlock(parsed[k]);
    element.appendChild(node);
    previous.push({ key: parsed[k].source.join("\n") + "\u0000" + parsed[k].kind, node: node });
  }
  element._markdownBlocks = previous;
}

