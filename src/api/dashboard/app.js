// The dashboard: polls the node's own routes, draws them (views.js), and acts through the same
// API any client uses. The API key, when the node asks for one, is kept in sessionStorage.

import { el, topology, nodeCards, instanceCard, preview, bytes } from './views.js';

const $ = (id) => document.getElementById(id);
const KEY = 'exo-api-key';
const POLL_MS = 1500;
let last = null; // previous status poll, for rates
let rates = {};
const seenRecoveries = new Set();

class Unauthorized extends Error {}

async function api(path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (opts.json !== undefined) { headers['Content-Type'] = 'application/json'; opts.body = JSON.stringify(opts.json); }
  const r = await fetch(path, { ...opts, headers });
  if (r.status === 401) { $('key-bar').hidden = false; throw new Unauthorized('the API key is missing or wrong'); }
  if (!r.ok) {
    let msg = `${r.status}`;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(typeof msg === 'string' ? msg : JSON.stringify(msg));
  }
  return r;
}

function event(text, cls = '') {
  const li = el('li', { class: cls }, `${new Date().toLocaleTimeString()} ${text}`);
  $('events').prepend(li);
  while ($('events').children.length > 50) $('events').lastChild.remove();
}

async function poll() {
  try {
    const [cluster, status] = await Promise.all([
      api('/cluster').then((r) => r.json()),
      api('/dashboard/status').then((r) => r.json()),
    ]);
    $('conn').textContent = 'live';
    $('key-bar').hidden = true;
    draw(cluster, status);
  } catch (e) {
    $('conn').textContent = e instanceof Unauthorized ? 'needs the API key' : `cannot reach the node: ${e.message}`;
  }
}

/// A download or window fetch: what, from where, how far, how fast.
function transferRow(t) {
  const pct = t.total_bytes ? Math.min(100, (100 * t.done_bytes) / t.total_bytes) : 0;
  const rate = t.seconds > 0 ? ` · ${bytes(t.done_bytes / t.seconds)}/s` : '';
  const what = `${t.kind === 'window' ? 'layers of' : 'download of'} ${t.model} from ${t.source}`;
  const state = t.state === 'failed' ? `failed: ${t.error || ''}` : t.state;
  return el('li', { class: `transfer ${t.state}` },
    el('div', {}, `${what}: ${bytes(t.done_bytes)} of ${bytes(t.total_bytes)} (${pct.toFixed(0)}%)${rate} · ${state}`),
    el('div', { class: 'bar' }, el('i', { style: `width:${pct}%` })));
}

function draw(cluster, status) {
  const names = (cluster.nodes || []).map((n) => n.name);
  $('here').textContent = status.node;
  topology($('topology'), cluster, names);
  nodeCards($('nodes'), cluster, names);
  const now = performance.now();
  for (const s of status.instances) {
    const p = last && last.instances.find((x) => x.model === s.model);
    const dt = last ? (now - last.at) / 1e3 : 0;
    if (p && dt > 0) rates[s.model] = { gen: (s.generated_tokens - p.generated_tokens) / dt, prompt: (s.prompt_tokens - p.prompt_tokens) / dt };
  }
  last = { at: now, instances: status.instances };
  const insts = cluster.instances || [];
  $('instances').replaceChildren(...(insts.length ? insts.map((i) => instanceCard(i, status.instances.find((s) => s.model === i.model),
    names, rates[i.model] || { gen: 0, prompt: 0 }, unload)) : [el('p', { class: 'muted' }, 'none')]));
  for (const i of insts) {
    for (const r of i.recoveries || []) {
      const k = `${i.model} ${JSON.stringify(r)}`;
      if (!seenRecoveries.has(k)) { seenRecoveries.add(k); event(`${i.model}: recovered: ${JSON.stringify(r)}`, 'recovery'); }
    }
  }
  $('transfers').replaceChildren(...((cluster.transfers || []).length ? cluster.transfers.map(transferRow)
    : [el('li', { class: 'muted' }, 'none')]));
  // the model pickers: local models and loaded ones
  const models = [...new Set([...status.local_models, ...insts.map((i) => i.model)])].sort();
  const sel = $('chat-model');
  if (sel.dataset.models !== models.join('\n')) {
    const keep = sel.value;
    sel.replaceChildren(...models.map((m) => el('option', { value: m }, m)));
    if (models.includes(keep)) sel.value = keep;
    sel.dataset.models = models.join('\n');
    $('model-names').replaceChildren(...models.map((m) => el('option', { value: m })));
  }
}

async function unload(id) {
  try { await api(`/instances/${encodeURIComponent(id)}`, { method: 'DELETE' }); event(`unloaded ${id}`); poll(); }
  catch (e) { event(`unload ${id}: ${e.message}`, 'error'); }
}

async function place(model, stages) {
  event(`placing ${model} over ${stages.map((s) => `${s.node} ${s.begin}:${s.end}`).join(', ')}…`);
  try {
    await api('/instances', { method: 'POST', json: { model, placement: stages.map(({ node, begin, end }) => ({ node, begin, end })) } });
    event(`placed ${model}`);
    poll();
  } catch (e) { event(`placing ${model}: ${e.message}`, 'error'); }
}

// Chat through the node's own Ollama API, streamed (NDJSON); Stop aborts the request.
let controller = null;
async function chat(ev) {
  ev.preventDefault();
  const text = $('chat-input').value.trim();
  const model = $('chat-model').value;
  const temperature = Math.min(2, Math.max(0, parseFloat($('chat-temp').value) || 0));
  if (!text || !model || controller) return;
  $('chat-input').value = '';
  const out = $('chat-output');
  out.append(el('div', { class: 'user' }, `> ${text}`));
  const answer = el('div', { class: 'answer' });
  out.append(answer);
  controller = new AbortController();
  $('chat-stop').disabled = false;
  $('chat-send').disabled = true;
  const t0 = performance.now();
  let pieces = 0;
  try {
    const r = await api('/api/chat', { method: 'POST', signal: controller.signal,
      json: { model, messages: [{ role: 'user', content: text }], stream: true, options: { num_predict: 256, temperature } } });
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line) continue;
        const v = JSON.parse(line);
        if (v.error) throw new Error(v.error);
        if (v.message && v.message.content) { answer.append(v.message.content); pieces++; out.scrollTop = out.scrollHeight; }
        $('chat-rates').textContent = `${pieces} pieces, ${((performance.now() - t0) / 1e3).toFixed(1)} s`;
        if (v.done) {
          const rate = (n, d) => (d ? (n / (d / 1e9)).toFixed(1) : '–');
          $('chat-rates').textContent = `prompt ${v.prompt_eval_count} tok at ${rate(v.prompt_eval_count, v.prompt_eval_duration)} tok/s · ` +
            `generated ${v.eval_count} tok at ${rate(v.eval_count, v.eval_duration)} tok/s`;
        }
      }
    }
  } catch (e) {
    if (e.name === 'AbortError') answer.append(' [stopped]');
    else answer.append(el('span', { class: 'error' }, ` [${e.message}]`));
  } finally {
    controller = null;
    $('chat-stop').disabled = true;
    $('chat-send').disabled = false;
  }
}

async function showPreview(ev) {
  ev.preventDefault();
  const model = $('preview-model').value.trim();
  if (!model) return;
  $('preview').replaceChildren(el('span', { class: 'muted' }, 'pricing…'));
  try {
    const p = await (await api(`/placements/preview?model=${encodeURIComponent(model)}`)).json();
    const names = [...new Set(p.nodes)];
    preview($('preview'), p, names, place);
  } catch (e) { $('preview').replaceChildren(el('span', { class: 'error' }, e.message)); }
}

$('key-bar').addEventListener('submit', (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $('key-input').value);
  $('key-input').value = '';
  poll();
});
$('chat-form').addEventListener('submit', chat);
$('chat-stop').addEventListener('click', () => controller && controller.abort());
$('preview-form').addEventListener('submit', showPreview);
poll();
setInterval(poll, POLL_MS);
export { bytes };
