// The console's only way to the server: the public /v1 API (and pomar's documented
// endpoints), with the API key from sessionStorage when the server has one.

const KEY = "pomar.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    const message = body?.error?.message || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.body = body;
  }
}

let askKey = null; // set by the app: () => Promise<string> (the key dialog)

export function onKeyNeeded(fn) {
  askKey = fn;
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return new ApiError(response.status, body);
}

let pending = null; // one key dialog at a time, shared by the requests that wait on it

// ask for the key after a 401 (`used`: the key that request carried)
async function newKey(used) {
  if (apiKey() !== used) return; // another request got a new key meanwhile: use it
  pending ??= askKey(used ? "That key was refused. Enter the server's API key." : null)
    .then(setApiKey)
    .finally(() => {
      pending = null;
    });
  await pending;
}

// fetch with the key; on 401 ask for the key (again, until one is accepted) and retry
async function send(path, init = {}) {
  for (;;) {
    const used = apiKey();
    const response = await fetch(path, { ...init, headers: headers(init.headers) });
    if (response.status === 401 && askKey) {
      await newKey(used);
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

export async function get(path) {
  return (await send(path)).json();
}

export async function post(path, body) {
  const init = { method: "POST", headers: { "Content-Type": "application/json" } };
  if (body !== undefined) init.body = JSON.stringify(body);
  return (await send(path, init)).json();
}

export async function del(path) {
  return (await send(path, { method: "DELETE" })).json();
}

export async function blob(path) {
  return (await send(path)).blob();
}

export async function text(path) {
  return (await send(path)).text();
}

// POST a JSON body with stream: true; calls onChunk(object) for each SSE data line
export async function stream(path, body, onChunk, signal) {
  const response = await send(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(200, chunk);
        onChunk(chunk);
      }
    }
  }
}

// multipart upload with progress (fetch has no upload progress): onProgress(0..1)
export function upload(file, purpose, onProgress) {
  const attempt = () =>
    new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/files");
      const key = apiKey();
      if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
      xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
      xhr.onload = () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          body = null;
        }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else reject(new ApiError(xhr.status, body));
      };
      xhr.onerror = () => reject(new ApiError(0, { error: { message: "network error" } }));
      const form = new FormData();
      form.append("purpose", purpose);
      form.append("file", file, file.name);
      xhr.send(form);
    });
  const tryUpload = () => {
    const used = apiKey();
    return attempt().catch(async (err) => {
      if (err.status !== 401 || !askKey) throw err;
      await newKey(used);
      return tryUpload();
    });
  };
  return tryUpload();
}

// every page of a paginated list (events, checkpoints, jobs), up to `max` items
export async function all(path, max = 2000) {
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(`${path}${sep}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.data);
    if (!page.has_more || !page.data.length || items.length >= max) return items;
    after = page.data[page.data.length - 1].id;
  }
}
