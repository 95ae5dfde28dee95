// The alignd playground: the same prompt answered by several decoder configurations side by side, streamed.
// Forms come from GET /v1/decoders (JSON schemas) and GET /v1/rewards; answers from POST /v1/chat/completions
// with stream: true. Model output is only ever set as text (textContent), never parsed as HTML.

const MAX_COLUMNS = 4;
const KEY_STORE = "alignd.apiKey"; // sessionStorage only: the key leaves with the tab
const STARTERS = ["sample", "best_of_n"];

const state = { decoders: {}, rewards: [], columns: [] };

// What a decoder supports, as GET /v1/decoders publishes it, in one line under its description.
function supportsLine(s) {
  if (!s) return "";
  return [
    s.streaming === "tokens" ? "streams tokens" : "streams the chosen answer",
    s.budget ? "stops at a budget" : "no early stop at a budget",
    s.n ? "n > 1" : "one answer",
    s.structured_output
      ? "structured output and forced tool calls" + (s.continues_prefix ? " (grammar carried over committed tokens)" : "")
      : "no structured output (response_format is refused)",
  ].join(" · ");
}
const $ = (selector, root = document) => root.querySelector(selector);

function headers() {
  const key = $("#api-key").value.trim();
  const out = { "content-type": "application/json" };
  if (key) out.authorization = `Bearer ${key}`;
  return out;
}

function banner(message) {
  const el = $("#banner");
  el.textContent = message || "";
  el.hidden = !message;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error(body.error?.message || `${path} answered ${response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

async function load() {
  try {
    const [models, decoders, rewards] = await Promise.all([
      getJSON("/v1/models"),
      getJSON("/v1/decoders"),
      getJSON("/v1/rewards"),
    ]);
    banner("");
    $("#model").replaceChildren(...models.data.map((m) => new Option(m.id, m.id)));
    state.decoders = Object.fromEntries(decoders.data.map((d) => [d.name, d]));
    state.rewards = rewards.data;
    if (!state.columns.length) STARTERS.forEach((name) => addColumn(name));
    else state.columns.forEach((column) => column.refresh());
  } catch (err) {
    banner(err.status === 401 ? "This server needs an API key: enter it above." : `Cannot reach the server: ${err.message}`);
  }
}

// ---- forms from JSON schemas --------------------------------------------------------------------------------

function fieldSchema(schema) {
  // pydantic writes `int | None` as anyOf [{type: integer, ...}, {type: null}]: use the non-null branch
  const branch = (schema.anyOf || []).find((s) => s.type !== "null");
  return { ...schema, ...(branch || {}), nullable: !!schema.anyOf };
}

function makeInput(name, raw) {
  const schema = fieldSchema(raw);
  const label = document.createElement("label");
  label.textContent = name;
  label.title = raw.description || "";
  let input;
  if (schema.enum) {
    input = document.createElement("select");
    schema.enum.forEach((v) => input.add(new Option(v, v)));
    input.value = raw.default ?? schema.enum[0];
  } else if (schema.type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = !!raw.default;
  } else if (schema.type === "integer" || schema.type === "number") {
    input = document.createElement("input");
    input.type = "number";
    input.step = schema.type === "integer" ? "1" : "any";
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
    input.placeholder = raw.default ?? "";
    if (raw.default !== undefined && raw.default !== null) input.value = raw.default;
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.placeholder = schema.type === "array" ? "comma-separated" : raw.default ?? "";
  }
  input.dataset.param = `decoder.${name}`;
  input.dataset.name = name;
  input.schema = schema;
  input.defaultValue_ = raw.default;
  label.append(input);
  return label;
}

function readInput(input) {
  // returns [value, error]; undefined value: leave the parameter to the server's default
  const schema = input.schema;
  if (input.type === "checkbox") return [input.checked, null];
  const text = input.value.trim();
  if (text === "") return [undefined, null];
  if (schema.type === "integer" || schema.type === "number") {
    const value = Number(text);
    if (!Number.isFinite(value)) return [undefined, "not a number"];
    if (schema.type === "integer" && !Number.isInteger(value)) return [undefined, "must be a whole number"];
    if (schema.minimum !== undefined && value < schema.minimum) return [undefined, `at least ${schema.minimum}`];
    if (schema.maximum !== undefined && value > schema.maximum) return [undefined, `at most ${schema.maximum}`];
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum)
      return [undefined, `more than ${schema.exclusiveMinimum}`];
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum)
      return [undefined, `less than ${schema.exclusiveMaximum}`];
    return [value, null];
  }
  if (schema.type === "array") return [text.split(",").map((s) => s.trim()).filter(Boolean).map(parseMaybeNumber), null];
  if (schema.type === "object") {
    try {
      return [JSON.parse(text), null];
    } catch {
      return [undefined, "not valid JSON"];
    }
  }
  return [text, null];
}

function parseMaybeNumber(s) {
  return /^-?\d+(\.\d+)?$/.test(s) ? Number(s) : s;
}

function showFieldError(input, message) {
  input.classList.toggle("invalid", !!message);
  let note = input.parentElement.querySelector(".field-error");
  if (!message) {
    note?.remove();
    return;
  }
  if (!note) {
    note = document.createElement("span");
    note.className = "field-error";
    input.parentElement.append(note);
  }
  note.textContent = message;
}

// ---- a column -----------------------------------------------------------------------------------------------

class Column {
  constructor(decoderName) {
    this.el = $("#column-template").content.firstElementChild.cloneNode(true);
    this.decoderSelect = $(".decoder", this.el);
    this.decoderSelect.addEventListener("change", () => this.buildParams());
    $(".remove", this.el).addEventListener("click", () => removeColumn(this));
    $(".copy-curl", this.el).addEventListener("click", () => this.copy("curl"));
    $(".copy-python", this.el).addEventListener("click", () => this.copy("python"));
    this.el.addEventListener("input", (event) => {
      if (event.target.schema || event.target.dataset.param) this.validate();
    });
    this.result = null;
    this.refresh(decoderName);
  }

  refresh(decoderName) {
    // after a reload of the server's lists (a new API key): keep what the user typed when nothing changed
    const current = decoderName || this.decoderSelect.value;
    this.decoderSelect.replaceChildren(...Object.keys(state.decoders).sort().map((n) => new Option(n, n)));
    if (current in state.decoders) this.decoderSelect.value = current;
    const schema = JSON.stringify(state.decoders[this.decoderSelect.value]?.params_schema || {});
    if (schema !== this.schema) this.buildParams();
    const rewards = JSON.stringify(state.rewards);
    if (rewards !== this.rewardsSeen) this.buildRewards();
    this.rewardsSeen = rewards;
  }

  buildParams() {
    const spec = state.decoders[this.decoderSelect.value];
    this.schema = JSON.stringify(spec?.params_schema || {});
    $(".description", this.el).textContent = spec?.description || "";
    $(".supports", this.el).textContent = supportsLine(spec?.supports);
    const props = spec?.params_schema?.properties || {};
    $(".params .fields", this.el).replaceChildren(...Object.entries(props).map(([name, schema]) => makeInput(name, schema)));
    $(".params", this.el).hidden = !Object.keys(props).length;
    this.validate();
  }

  buildRewards() {
    const rows = state.rewards.map((reward, i) => {
      const row = document.createElement("div");
      row.className = "reward";
      row.dataset.reward = reward.name;
      const check = document.createElement("input");
      check.type = "checkbox";
      check.checked = reward.name === "judge" || (i === 0 && !state.rewards.some((r) => r.name === "judge"));
      check.className = "use";
      const label = document.createElement("label");
      label.textContent = `${reward.name} (${reward.kind})`;
      label.title = reward.description || "";
      const weight = document.createElement("input");
      weight.type = "number";
      weight.step = "any";
      weight.value = "1";
      weight.className = "weight";
      weight.title = "weight";
      label.append(weight);
      row.append(check, label);
      for (const param of reward.request_params) {
        const input = document.createElement("input");
        input.type = "text";
        input.className = "reward-param";
        input.dataset.name = param;
        input.placeholder = `${param} (comma-separated or JSON)`;
        row.append(document.createElement("span"), input);
      }
      return row;
    });
    $(".rewards .fields", this.el).replaceChildren(...rows);
  }

  validate() {
    let ok = true;
    for (const input of this.el.querySelectorAll(".params [data-name]")) {
      const [, error] = readInput(input);
      showFieldError(input, error);
      ok &&= !error;
    }
    for (const input of this.el.querySelectorAll(".sampling input")) {
      const error = input.value !== "" && !input.checkValidity() ? input.validationMessage : null;
      showFieldError(input, error);
      ok &&= !error;
    }
    this.valid = ok;
    return ok;
  }

  body() {
    const decoder = { name: this.decoderSelect.value };
    for (const input of this.el.querySelectorAll(".params [data-name]")) {
      const [value] = readInput(input);
      if (value !== undefined && value !== input.defaultValue_) decoder[input.dataset.name] = value;
    }
    const body = { model: $("#model").value, messages: [] };
    const system = $("#system").value.trim();
    if (system) body.messages.push({ role: "system", content: system });
    body.messages.push({ role: "user", content: $("#user").value });
    for (const input of this.el.querySelectorAll(".sampling input")) {
      if (input.value !== "") body[input.dataset.param] = Number(input.value);
    }
    body.decoder = Object.keys(decoder).length > 1 ? decoder : decoder.name;
    const rewards = [];
    for (const row of this.el.querySelectorAll(".reward")) {
      if (!$(".use", row).checked) continue;
      const term = { name: row.dataset.reward, weight: Number($(".weight", row).value || 1) };
      const params = {};
      for (const input of row.querySelectorAll(".reward-param")) {
        const text = input.value.trim();
        if (!text) continue;
        try {
          params[input.dataset.name] = JSON.parse(text);
        } catch {
          params[input.dataset.name] = text.split(",").map((s) => s.trim()).filter(Boolean);
        }
      }
      if (Object.keys(params).length) term.params = params;
      rewards.push(term);
    }
    if (rewards.length) body.reward = rewards;
    body.return_candidates = true;
    return body;
  }

  copy(kind) {
    const body = this.body();
    const text = kind === "curl" ? curlCommand(body) : pythonSnippet(body);
    navigator.clipboard?.writeText(text).catch(() => {});
    this.el.dataset.copied = text; // also readable when the page has no clipboard permission
    $(".status", this.el).textContent = `${kind === "curl" ? "curl command" : "Python snippet"} copied`;
  }

  clear() {
    $(".error", this.el).hidden = true;
    $(".answer", this.el).textContent = "";
    $(".stats", this.el).replaceChildren();
    $(".candidates", this.el).replaceChildren();
    this.el.querySelectorAll(".field-error").forEach((e) => e.remove());
    this.el.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
    this.result = null;
  }

  error(status, error) {
    const box = $(".error", this.el);
    box.hidden = false;
    box.textContent = `${status} ${error.type || "error"}: ${error.message || "request failed"}`;
    if (!error.param) return;
    const target = this.el.querySelector(`[data-param="${CSS.escape(error.param)}"]`)
      || this.el.querySelector(`[data-param="${CSS.escape(error.param.split(".")[0])}"]`);
    if (target) {
      if (target.tagName === "FIELDSET") target.classList.add("invalid");
      else showFieldError(target, error.message);
    }
  }

  async run() {
    this.clear();
    if (!this.validate()) {
      $(".status", this.el).textContent = "fix the fields marked in red";
      return;
    }
    const body = { ...this.body(), stream: true, stream_options: { include_usage: true } };
    const spec = state.decoders[this.decoderSelect.value];
    const status = $(".status", this.el);
    const answer = $(".answer", this.el);
    const start = performance.now();
    let ttft = null;
    const tick = setInterval(() => {
      const seconds = ((performance.now() - start) / 1000).toFixed(1);
      status.textContent = spec?.streams_tokens || ttft !== null
        ? `streaming… ${seconds} s`
        : `weighing candidates… ${seconds} s (this decoder answers once it has chosen)`;
    }, 100);
    try {
      const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
      if (!response.ok) {
        const err = await response.json().catch(() => ({ error: { message: response.statusText } }));
        this.error(response.status, err.error || {});
        status.textContent = "";
        return;
      }
      for await (const event of sseEvents(response)) {
        if (event.error) {
          this.error("stream", event.error);
          break;
        }
        for (const choice of event.choices || []) {
          const piece = choice.delta?.content;
          if (piece) {
            if (ttft === null) ttft = (performance.now() - start) / 1000;
            answer.textContent += piece;
          }
        }
        if (event.alignment) this.show(event.alignment, (performance.now() - start) / 1000, ttft);
      }
      status.textContent = `done in ${((performance.now() - start) / 1000).toFixed(2)} s`;
    } catch (err) {
      this.error("network", { message: err.message });
    } finally {
      clearInterval(tick);
      drawChart();
    }
  }

  show(alignment, seconds, ttft) {
    const usage = alignment.usage;
    this.result = {
      reward: alignment.choices[0]?.reward ?? null,
      tokens: usage.engine_prompt_tokens + usage.engine_completion_tokens,
      label: this.decoderSelect.value,
    };
    const stats = [
      ["reward", this.result.reward === null ? "—" : this.result.reward.toFixed(3)],
      ["engine tokens", `${this.result.tokens} (${usage.engine_prompt_tokens} prompt, ${usage.engine_cached_tokens} cached, ${usage.engine_completion_tokens} generated)`],
      ["engine calls", `${usage.engine_calls}, reward calls ${usage.reward_calls}`],
      ["time", `${seconds.toFixed(2)} s`],
      ["time to first token", ttft === null ? "—" : `${ttft.toFixed(2)} s`],
    ];
    $(".stats", this.el).replaceChildren(...stats.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      return [dt, dd];
    }));
    const candidates = alignment.candidates || [];
    const chosen = alignment.choices[0]?.candidate_index;
    const scored = candidates.map((c) => c.reward).filter((r) => r !== null);
    const lo = Math.min(...scored), hi = Math.max(...scored);
    $(".candidates", this.el).replaceChildren(...candidates.map((c) => {
      const li = document.createElement("li");
      if (c.index === chosen) li.classList.add("chosen");
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = c.text; // model output is text, never markup
      const value = document.createElement("div");
      value.className = c.dropped ? "dropped" : "value";
      value.textContent = c.dropped
        ? `dropped: ${c.dropped}`
        : `reward ${c.reward === null ? "—" : c.reward.toFixed(3)} ${Object.entries(c.rewards || {})
          .map(([k, v]) => `${k}=${v === null ? "—" : Number(v).toFixed(3)}`).join(" ")}`;
      li.append(text, value);
      if (c.reward !== null && !c.dropped) {
        const bar = document.createElement("div");
        bar.className = "bar";
        bar.style.width = `${hi > lo ? 5 + (95 * (c.reward - lo)) / (hi - lo) : 100}%`;
        li.append(bar);
      }
      return li;
    }));
  }
}

async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data || data === "[DONE]") continue;
      yield JSON.parse(data);
    }
  }
}

// ---- snippets -----------------------------------------------------------------------------------------------

function curlCommand(body) {
  const key = $("#api-key").value.trim() ? ` -H 'authorization: Bearer ${"$"}ALIGND_API_KEY'` : "";
  const json = JSON.stringify(body, null, 2).replaceAll("'", "'\\''");
  return `curl -s ${location.origin}/v1/chat/completions -H 'content-type: application/json'${key} -d '${json}'`;
}

function pythonSnippet(body) {
  const { model, messages, decoder, reward, return_candidates, ...sampling } = body;
  const extra = { decoder, ...(reward ? { reward } : {}), return_candidates };
  const args = Object.entries(sampling).map(([k, v]) => `    ${k}=${JSON.stringify(v)},`).join("\n");
  const py = (v) => JSON.stringify(v, null, 4).replaceAll("true", "True").replaceAll("false", "False").replaceAll("null", "None");
  return [
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url="${location.origin}/v1", api_key="${$("#api-key").value.trim() ? "YOUR_KEY" : "unused"}")`,
    "out = client.chat.completions.create(",
    `    model=${JSON.stringify(model)},`,
    `    messages=${py(messages)},`,
    args,
    `    extra_body=${py(extra)},`,
    ")",
    "print(out.choices[0].message.content)",
    'print(out.model_extra["alignment"]["choices"][0]["reward"])',
  ].filter((line) => line !== "").join("\n");
}

// ---- the chart ----------------------------------------------------------------------------------------------

function drawChart() {
  const canvas = $("#frontier");
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  ctx.clearRect(0, 0, w, h);
  const points = state.columns.map((c, i) => ({ ...c.result, i })).filter((p) => p.tokens && p.reward !== null && p.reward !== undefined);
  const pad = { l: 56, r: 16, t: 12, b: 32 };
  ctx.strokeStyle = "#d7dce3";
  ctx.fillStyle = "#667085";
  ctx.font = "12px system-ui, sans-serif";
  ctx.strokeRect(pad.l, pad.t, w - pad.l - pad.r, h - pad.t - pad.b);
  ctx.fillText("engine tokens →", w - pad.r - 100, h - 8);
  ctx.save();
  ctx.translate(14, h / 2 + 20);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("reward →", 0, 0);
  ctx.restore();
  if (!points.length) return;
  const xs = points.map((p) => p.tokens), ys = points.map((p) => p.reward);
  const [x0, x1] = [Math.min(...xs, 0), Math.max(...xs) * 1.1 || 1];
  const [y0, y1] = ys.length > 1 && Math.max(...ys) > Math.min(...ys)
    ? [Math.min(...ys), Math.max(...ys)] : [ys[0] - 1, ys[0] + 1];
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const sy = (y) => h - pad.b - ((y - y0) / (y1 - y0)) * (h - pad.t - pad.b - 16) - 8;
  ctx.fillText(String(Math.round(x1)), w - pad.r - 40, h - pad.b + 14);
  ctx.fillText(y1.toFixed(2), 4, pad.t + 10);
  ctx.fillText(y0.toFixed(2), 4, h - pad.b);
  for (const p of points) {
    ctx.fillStyle = "#2f6fde";
    ctx.beginPath();
    ctx.arc(sx(p.tokens), sy(p.reward), 5, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillStyle = "#1d2330";
    ctx.fillText(`${p.i + 1}: ${p.label}`, sx(p.tokens) + 8, sy(p.reward) + 4);
  }
}

// ---- page ---------------------------------------------------------------------------------------------------

function addColumn(name) {
  if (state.columns.length >= MAX_COLUMNS) return;
  const column = new Column(name || "sample");
  state.columns.push(column);
  $("#columns").append(column.el);
  $("#add-column").disabled = state.columns.length >= MAX_COLUMNS;
}

function removeColumn(column) {
  state.columns = state.columns.filter((c) => c !== column);
  column.el.remove();
  $("#add-column").disabled = false;
  drawChart();
}

$("#api-key").value = sessionStorage.getItem(KEY_STORE) || "";
$("#api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, $("#api-key").value.trim());
  load();
});
$("#add-column").addEventListener("click", () => addColumn());
$("#run").addEventListener("click", async () => {
  $("#run").disabled = true;
  try {
    await Promise.all(state.columns.map((c) => c.run()));
  } finally {
    $("#run").disabled = false;
  }
});
load();
drawChart();
