// The ourvidz page: submit a job, watch it (Server-Sent Events, or polling), browse and delete assets.
// Plain ES module, no build step. Every value from the server goes into the page as text, never as HTML.

const TOKEN_KEY = "ourvidz.token";
const JOB_KEY = "ourvidz.lastJob";
const POLL_MS = 2000;
const REFRESH_MS = 10000;
const PAGE_SIZE = 12;
const TERMINAL = new Set(["completed", "failed", "canceled"]);

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

const state = {
  token: null,
  catalog: new Map(),
  job: null, // the job being watched
  watcher: null, // {source, timer}
  renderedOutput: null, // id of the job whose files are shown
  cursor: null,
  assetsLoading: false,
};

// --- Talking to the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    super(body?.error || `Request failed (${status})`);
    this.status = status;
    this.suggestedAction = body?.suggestedAction || null;
    this.details = body?.details || null;
    this.retryable = Boolean(body?.retryable);
    this.retryAfter = retryAfter; // seconds, from a 429's or a 503's Retry-After
  }
}

async function api(path, { method = "GET", body, auth = true, headers = {} } = {}) {
  const sent = { Accept: "application/json", ...headers };
  if (auth && state.token) sent.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, { error: "The server cannot be reached", suggestedAction: "Check your connection and retry.", retryable: true });
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const wait = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    const error = new ApiError(response.status, data, Number.isFinite(wait) ? wait : null);
    if (response.status === 401 && auth) signedOut(error);
    throw error;
  }
  return data;
}

function showError(box, error) {
  if (!error) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  const parts = [el("strong", { text: error.message })];
  if (error.suggestedAction) parts.push(el("span", { text: ` ${error.suggestedAction}` }));
  if (error.details) parts.push(el("small", { class: "details", text: error.details }));
  box.replaceChildren(...parts);
  box.hidden = false;
}

// --- Formatting -----------------------------------------------------------------------------------

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  const rest = s % 60;
  return rest ? `${m} min ${rest} s` : `${m} min`;
}

// An estimate reads better rounded: "about 4 min", not "about 4 min 1 s".
const approx = (seconds) => duration(seconds >= 60 ? Math.round(seconds / 10) * 10 : seconds);

const credits = (n) => `${n} credit${n === 1 ? "" : "s"}`;

function typeLabel(t) {
  if (!t) return "";
  const quality = t.quality === "high" ? "high quality" : "fast";
  if (t.family === "sdxl") return `SDXL · ${t.count} images · ${quality}`;
  return `Wan 2.1 · ${t.output} · ${quality}${t.enhanced ? " · enhanced" : ""}`;
}

// One file's kind of job, for the library's cards: "SDXL image · fast", "Wan video · high · enhanced".
function assetLabel(t, kind) {
  if (!t) return kind;
  const family = t.family === "sdxl" ? "SDXL" : "Wan";
  return `${family} ${t.output} · ${t.quality}${t.enhanced ? " · enhanced" : ""}`;
}

function bytes(n) {
  if (!n) return "";
  if (n < 1024 * 1024) return `${Math.max(1, Math.round(n / 1024))} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

const when = (iso) => new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });

// --- Signing in -----------------------------------------------------------------------------------

function tokenFromUrl() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const token = hash.get("token");
  if (token) {
    localStorage.setItem(TOKEN_KEY, token.trim());
    // Out of the address bar and the history, so it is not shared by copying the URL.
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function signedIn() {
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("library").hidden = false;
  $("balance").hidden = false;
  $("sign-out").hidden = false;
  refreshBalance();
  loadAssets(true);
  if (!state.job) resume(localStorage.getItem(JOB_KEY));
}

function signedOut(error) {
  stopWatching();
  clearResult();
  state.token = null;
  $("app").hidden = true;
  $("library").hidden = true;
  $("balance").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  showError($("token-error"), error || null);
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  localStorage.setItem(TOKEN_KEY, token);
  state.token = token;
  $("token-input").value = "";
  showError($("token-error"), null);
  signedIn();
  $("prompt").focus();
});

$("sign-out").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(JOB_KEY);
  signedOut(null);
  $("token-input").focus();
});

// --- The catalog and the form ---------------------------------------------------------------------

const GROUPS = [
  ["SDXL images", (t) => t.family === "sdxl"],
  ["Wan images", (t) => t.family === "wan" && t.output === "image"],
  ["Wan videos", (t) => t.family === "wan" && t.output === "video"],
];

async function loadCatalog() {
  const select = $("job-type");
  try {
    const { job_types: types } = await api("/api/catalog", { auth: false });
    state.catalog = new Map(types.map((t) => [t.job_type, t]));
    const groups = GROUPS.map(([label, test]) => {
      const options = types.filter(test).map((t) =>
        el("option", { value: t.job_type, text: `${typeLabel(t)} — ${credits(t.price)}, ~${approx(t.expected_seconds)}` }));
      return options.length ? el("optgroup", { label }, ...options) : null;
    });
    select.replaceChildren(...groups.filter(Boolean));
    describeType();
  } catch (error) {
    showError($("form-error"), error);
  }
}

function describeType() {
  const t = state.catalog.get($("job-type").value);
  if (!t) return;
  const facts = [t.description, credits(t.price), `about ${approx(t.expected_seconds)}`];
  if (t.output === "video") facts.push(`${t.frames} frames at ${t.fps} fps`);
  $("job-type-info").textContent = facts.join(" · ");
  $("negative-field").hidden = !t.negative_prompt_supported;
  $("submit").textContent = `Generate · ${credits(t.price)}`;
}

$("job-type").addEventListener("change", describeType);

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const t = state.catalog.get($("job-type").value);
  const prompt = $("prompt").value.trim();
  if (!t) return;
  if (!prompt) {
    showError($("form-error"), { message: "Write a prompt first.", suggestedAction: "Describe the picture or video you want." });
    $("prompt").focus();
    return;
  }
  const metadata = { prompt };
  const negative = $("negative-prompt").value.trim();
  if (t.negative_prompt_supported && negative) metadata.negative_prompt = negative;
  const seed = $("seed").value.trim();
  if (seed) metadata.seed = Number(seed);
  const button = $("submit");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  showError($("form-error"), null);
  try {
    const answer = await api("/api/queue-job", { method: "POST", body: { jobType: t.job_type, metadata } });
    watch({ ...answer.job, progress: 0 });
    refreshBalance();
    refreshQueue();
  } catch (error) {
    showError($("form-error"), error);
    if (error.status === 429 && error.retryAfter) return holdSubmit(button, error.retryAfter);
  } finally {
    button.removeAttribute("aria-busy");
  }
  button.disabled = false;
});

// A refusal that says when to come back (too many jobs or requests): the button counts down to it.
function holdSubmit(button, seconds) {
  const label = button.textContent;
  let left = seconds;
  const tick = () => {
    if (left <= 0) {
      clearInterval(timer);
      button.textContent = label;
      button.disabled = false;
      return;
    }
    button.textContent = `Retry in ${left} s`;
    left -= 1;
  };
  const timer = setInterval(tick, 1000);
  tick();
}

// --- Watching a job -------------------------------------------------------------------------------

// Back to the empty result panel (signed out, or another user signs in).
function clearResult() {
  state.job = null;
  state.renderedOutput = null;
  delete $("result").dataset.jobId;
  for (const id of ["job-status", "job-prompt", "job-meta", "job-percent"]) $(id).textContent = "";
  $("job-output").replaceChildren();
  $("job-badge").hidden = true;
  $("progress-row").hidden = true;
  $("cancel").hidden = true;
  $("result-empty").hidden = false;
  showError($("job-error"), null);
  $("assets").replaceChildren();
}

function stopWatching() {
  const watcher = state.watcher;
  state.watcher = null;
  if (!watcher) return;
  watcher.source?.close();
  clearTimeout(watcher.timer);
}

// Show the job this browser watched last, or else the user's latest job.
async function resume(jobId) {
  try {
    if (jobId) {
      const job = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
      if (!state.job) watch(job); // unless a job was submitted meanwhile
      return;
    }
  } catch (error) {
    if (error.status !== 404) return;
    localStorage.removeItem(JOB_KEY);
  }
  try {
    const [latest] = await api("/api/jobs?limit=1");
    if (latest && !state.job) watch(latest);
  } catch {
    // nothing to show yet
  }
}

function watch(job) {
  stopWatching();
  state.job = job;
  localStorage.setItem(JOB_KEY, job.id);
  renderJob(job);
  if (TERMINAL.has(job.status)) return;
  const watcher = {};
  state.watcher = watcher;
  if (!("EventSource" in window)) {
    poll(watcher, job.id);
    return;
  }
  // EventSource cannot send headers: the events route alone takes the token as a query parameter.
  const url = `/api/jobs/${encodeURIComponent(job.id)}/events?access_token=${encodeURIComponent(state.token)}`;
  const source = new EventSource(url);
  watcher.source = source;
  source.addEventListener("job", (message) => {
    if (state.watcher !== watcher) return;
    const current = JSON.parse(message.data);
    renderJob(current);
    if (TERMINAL.has(current.status)) stopWatching();
  });
  source.addEventListener("error", () => {
    if (state.watcher !== watcher) return;
    // A stream that dropped or was refused (a proxy that buffers, an old server): poll instead.
    source.close();
    watcher.source = null;
    poll(watcher, job.id);
  });
}

function poll(watcher, jobId) {
  const tick = async () => {
    if (state.watcher !== watcher) return;
    try {
      const job = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
      if (state.watcher !== watcher) return;
      renderJob(job);
      if (TERMINAL.has(job.status)) {
        stopWatching();
        return;
      }
    } catch (error) {
      if (error.status === 404 || error.status === 401) {
        showError($("job-error"), error);
        stopWatching();
        return;
      }
    }
    watcher.timer = setTimeout(tick, POLL_MS);
  };
  watcher.timer = setTimeout(tick, POLL_MS);
}

const STATUS_TEXT = {
  queued: (job) => {
    const parts = ["Queued"];
    if (job.queue_position) parts.push(`position ${job.queue_position}`);
    if (job.estimated_wait_seconds) parts.push(`about ${approx(job.estimated_wait_seconds)} to wait`);
    return parts.join(" · ");
  },
  processing: () => "Generating…",
  completed: (job) => {
    const took = job.completed_at ? (new Date(job.completed_at) - new Date(job.created_at)) / 1000 : null;
    return took !== null && took >= 0 ? `Done in ${duration(took)}` : "Done";
  },
  failed: () => "Failed: your credits were refunded.",
  canceled: () => "Canceled: your credits were refunded.",
};

function renderJob(job) {
  const previous = state.job;
  state.job = job;
  const t = state.catalog.get(job.job_type);
  $("result").dataset.jobId = job.id;
  const badge = $("job-badge");
  badge.hidden = false;
  badge.textContent = job.status;
  badge.dataset.status = job.status;
  // The live region speaks when the words change, not on every percent.
  const text = (STATUS_TEXT[job.status] || (() => job.status))(job);
  if ($("job-status").textContent !== text) $("job-status").textContent = text;

  const active = !TERMINAL.has(job.status);
  const progress = $("job-progress");
  $("progress-row").hidden = !active;
  if (job.status === "processing") {
    progress.value = job.progress;
    $("job-percent").textContent = `${job.progress}%`;
  } else {
    progress.removeAttribute("value"); // indeterminate while waiting in the queue
    $("job-percent").textContent = "";
  }
  $("cancel").hidden = job.status !== "queued";

  $("job-prompt").textContent = job.metadata?.prompt ? `“${job.metadata.prompt}”` : "";
  const facts = [typeLabel(t) || job.job_type, `job ${job.id.slice(0, 8)}`];
  if (job.metadata?.enhanced_prompt) facts.push(`enhanced prompt: “${job.metadata.enhanced_prompt}”`);
  $("job-meta").textContent = facts.join(" · ");
  $("result-empty").hidden = true;

  if (job.status === "failed") showError($("job-error"), { message: job.error_message || "The job failed.", suggestedAction: "Try again, or pick another job type." });
  else showError($("job-error"), null);

  if (job.status === "completed" && state.renderedOutput !== job.id) {
    state.renderedOutput = job.id;
    renderOutput(job, t);
    loadAssets(true);
  } else if (job.status !== "completed" && state.renderedOutput !== job.id) {
    $("job-output").replaceChildren();
  }
  if (previous?.id === job.id && previous.status !== job.status && TERMINAL.has(job.status)) {
    refreshBalance();
    refreshQueue();
  }
}

function media(asset, alt, { preload = "metadata" } = {}) {
  if (asset.kind === "video") {
    // `#t=0.1`: the browser fetches and shows a frame from the start instead of an empty box.
    return el("video", { src: `${asset.url}#t=0.1`, controls: true, playsinline: true, preload, "aria-label": alt });
  }
  return el("img", { src: asset.url, alt, loading: "lazy", decoding: "async" });
}

function renderOutput(job, t) {
  const assets = [...(job.assets || [])].sort((a, b) => a.index - b.index);
  const prompt = job.metadata?.prompt || "";
  const box = $("job-output");
  box.className = `output ${assets.length > 1 ? "grid" : "single"} ${t?.output || ""}`;
  const items = assets.map((asset, i) => {
    const which = assets.length > 1 ? `${asset.kind} ${i + 1} of ${assets.length}` : asset.kind;
    const alt = `${which[0].toUpperCase()}${which.slice(1)}: ${prompt}`;
    const shown = asset.kind === "video"
      ? media(asset, alt, { preload: "auto" })
      : el("a", { href: asset.url, target: "_blank", rel: "noopener", class: "open" }, media(asset, alt));
    const download = el("a", { href: asset.url, download: "", class: "fab", "aria-label": `Download ${which}`, title: "Download" },
      el("span", { "aria-hidden": "true", text: "↓" }));
    return el("figure", { class: "tile" }, shown, download);
  });
  box.replaceChildren(...items);
}

$("cancel").addEventListener("click", async () => {
  const job = state.job;
  if (!job) return;
  try {
    watch(await api(`/api/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" }));
    refreshBalance();
  } catch (error) {
    showError($("job-error"), error);
  }
});

// --- The library ----------------------------------------------------------------------------------

async function loadAssets(reset) {
  if (!state.token || state.assetsLoading) return;
  state.assetsLoading = true;
  const list = $("assets");
  const status = $("library-status");
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const kind = $("kind-filter").value;
  if (kind) params.set("kind", kind);
  if (!reset && state.cursor) params.set("cursor", state.cursor);
  list.setAttribute("aria-busy", "true");
  try {
    const page = await api(`/api/assets?${params}`);
    if (reset) list.replaceChildren();
    addAssets(list, page.assets);
    state.cursor = page.next_cursor;
    $("more-assets").hidden = !page.next_cursor;
    status.textContent = list.children.length ? "" : (kind ? `No ${kind}s yet.` : "Nothing here yet: your images and videos will appear here.");
  } catch (error) {
    status.textContent = `${error.message}${error.suggestedAction ? ` ${error.suggestedAction}` : ""}`;
  } finally {
    state.assetsLoading = false;
    list.removeAttribute("aria-busy");
  }
}

// One card per job: an SDXL job's six images together, a video on its own. Assets come newest first,
// a job's files side by side, so a file joins the last card when it is of the same job (also across pages).
function addAssets(list, assets) {
  for (const asset of assets) {
    let card = list.lastElementChild;
    if (!card || card.dataset.jobId !== asset.job_id) {
      card = jobCard(asset);
      list.append(card);
    }
    const thumbs = card.querySelector(".thumbs");
    thumbs.append(fileTile(asset, card.dataset.label));
    card.classList.toggle("group", thumbs.children.length > 1);
  }
}

function jobCard(asset) {
  const label = assetLabel(state.catalog.get(asset.bucket), asset.kind);
  return el("li", { class: "asset", "data-job-id": asset.job_id, "data-kind": asset.kind, "data-label": label },
    el("div", { class: "thumbs" }),
    el("div", { class: "asset-info" },
      el("p", { class: "asset-title", text: label }),
      el("p", { class: "hint", text: when(asset.created_at) })));
}

function fileTile(asset, label) {
  const name = `${asset.kind} ${asset.index + 1} from ${when(asset.created_at)}`;
  const remove = el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${name}` });
  const download = el("a", { href: asset.url, download: "", class: "download", text: "Download", "aria-label": `Download ${name}` });
  const tile = el("figure", { class: "file", "data-asset-id": asset.id, title: bytes(asset.size_bytes) },
    el("div", { class: "thumb" }, media(asset, `${label}, ${name}`)),
    el("figcaption", { class: "asset-actions" }, download, remove));
  remove.addEventListener("click", () => deleteAsset(asset, tile, name));
  return tile;
}

async function deleteAsset(asset, tile, name) {
  if (!window.confirm(`Delete this ${name}? This cannot be undone.`)) return;
  const status = $("library-status");
  try {
    await api(`/api/assets/${encodeURIComponent(asset.id)}`, { method: "DELETE" });
    const card = tile.closest("li");
    const next = tile.nextElementSibling || tile.previousElementSibling || card.nextElementSibling || card.previousElementSibling;
    tile.remove();
    const left = card.querySelector(".thumbs").children.length;
    if (!left) card.remove();
    else card.classList.toggle("group", left > 1);
    status.textContent = `Deleted the ${name}.`;
    // Keep the keyboard where it was: on the neighbouring file, or the list's heading.
    (next?.querySelector("button.danger") || $("kind-filter")).focus();
    if (!$("assets").children.length) loadAssets(true);
  } catch (error) {
    status.textContent = `${error.message}${error.suggestedAction ? ` ${error.suggestedAction}` : ""}`;
  }
}

$("kind-filter").addEventListener("change", () => loadAssets(true));
$("refresh-assets").addEventListener("click", () => loadAssets(true));
$("more-assets").addEventListener("click", () => loadAssets(false));

// --- Balance and queue, refreshed periodically --------------------------------------------------------

async function refreshBalance() {
  if (!state.token) return;
  try {
    const me = await api("/api/me");
    $("balance-value").textContent = String(me.balance);
    $("balance").title = `Signed in as ${me.email || me.user_id}`;
  } catch {
    // 401 already sends the page to sign-in; anything else leaves the last known value.
  }
}

async function refreshQueue() {
  const value = $("queue-value");
  try {
    const q = await api("/api/queue-status", { auth: false });
    $("workers-value").textContent = `${q.workers} worker${q.workers === 1 ? "" : "s"}`;
    if (!q.healthy) {
      value.textContent = "unavailable";
      return;
    }
    const byName = Object.fromEntries(q.queues.map((x) => [x.queue, x]));
    const jobs = (x) => `${x ? x.depth + x.processing : 0}`;
    value.textContent = `SDXL ${jobs(byName.sdxl_queue)} · Wan ${jobs(byName.wan_queue)}`;
    const waits = q.queues.map((x) => x.estimated_wait_seconds).filter((w) => w > 0);
    $("queue").title = waits.length ? `Expected wait up to ${approx(Math.max(...waits))}` : "No wait";
  } catch {
    value.textContent = "unknown";
  }
}

setInterval(() => {
  if (document.visibilityState !== "visible") return;
  refreshBalance();
  refreshQueue();
}, REFRESH_MS);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") {
    refreshBalance();
    refreshQueue();
  }
});

// --- Start ----------------------------------------------------------------------------------------

// A `#token=` link opened in a tab already on this page changes only the hash: sign in from it too.
window.addEventListener("hashchange", () => {
  if (!new URLSearchParams(location.hash.slice(1)).get("token")) return;
  tokenFromUrl();
  state.token = localStorage.getItem(TOKEN_KEY);
  signedIn();
});

tokenFromUrl();
state.token = localStorage.getItem(TOKEN_KEY);
await loadCatalog();
refreshQueue();
if (state.token) signedIn();
else signedOut(null);
document.body.dataset.ready = "true";
