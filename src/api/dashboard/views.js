// Rendering: plain DOM and SVG from the JSON the node serves. No state lives here.

const PALETTE = ['#4fb3ff', '#7ee081', '#ffb86b', '#d39bff', '#ff7f9f', '#6be0d6', '#f4e06d'];

export function colorOf(nodes, name) {
  const i = nodes.indexOf(name);
  return PALETTE[(i < 0 ? nodes.length : i) % PALETTE.length];
}

export function el(tag, attrs = {}, ...children) {
  const svg = ['svg', 'circle', 'line', 'text', 'g', 'title'].includes(tag);
  const e = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    // custom properties (--c) only take effect through setProperty
    if (k === 'style' && typeof v === 'object') for (const [p, x] of Object.entries(v)) e.style.setProperty(p.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()), x);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}

export function bytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

const fixed = (x, d = 1) => (x === null || x === undefined || !isFinite(x) ? '–' : x.toFixed(d));

// Nodes on a circle, measured links between them (round trip, bandwidth).
export function topology(svg, cluster, names) {
  svg.replaceChildren();
  const n = names.length, cx = 180, cy = 120, r = n > 1 ? 85 : 0;
  const pos = Object.fromEntries(names.map((name, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    return [name, [cx + r * Math.cos(a), cy + r * Math.sin(a)]];
  }));
  for (const l of cluster.links || []) {
    const [a, b] = [pos[l.from], pos[l.to]];
    if (!a || !b) continue;
    const bw = l.bandwidth_bytes_per_second ? bytes(l.bandwidth_bytes_per_second) + '/s' : 'measuring';
    // each direction is its own entry (measured by its own end, else the other): a -> b is
    // labelled near b on one side of the line, b -> a near a on the other (the normal flips
    // with the direction), each growing away from the line
    const [dx, dy] = [b[0] - a[0], b[1] - a[1]];
    const len = Math.hypot(dx, dy) || 1;
    const [nx, ny] = [dy / len, -dx / len];
    const [x, y] = [a[0] + 0.65 * dx + 6 * nx, a[1] + 0.65 * dy + 6 * ny];
    const anchor = nx > 0.3 ? 'start' : nx < -0.3 ? 'end' : 'middle';
    const top = ny < -0.3 ? y - 14 : ny > 0.3 ? y + 4 : y - 5;
    const title = el('title', {}, `${l.from} → ${l.to}, measured by ${l.measured_by || '?'}`);
    svg.append(
      el('line', { x1: a[0], y1: a[1], x2: b[0], y2: b[1], stroke: '#2a3542', 'stroke-width': 2, class: 'link' }),
      el('text', { x, y: top, class: 'link-label', style: { textAnchor: anchor } }, `${fixed(l.rtt_ms, 2)} ms`, title),
      el('text', { x, y: top + 10, class: 'link-label', style: { textAnchor: anchor } }, bw),
    );
  }
  for (const name of names) {
    const [x, y] = pos[name];
    svg.append(el('g', { class: 'topo-node' },
      el('circle', { cx: x, cy: y, r: 22, fill: colorOf(names, name), opacity: 0.9 }),
      el('text', { x, y: y + 4, style: { fill: '#000' } }, name.length > 8 ? name.slice(0, 7) + '…' : name),
      el('title', {}, name)));
  }
}

export function nodeCards(box, cluster, names) {
  box.replaceChildren(...(cluster.nodes || []).map((nd) => {
    const p = nd.profile || {};
    const used = p.memory_total && p.memory_available !== undefined ? p.memory_total - p.memory_available : null;
    const share = p.memory_total ? Math.min(100, (100 * used) / p.memory_total) : 0;
    return el('div', { class: 'node', 'data-node': nd.name, style: { '--c': colorOf(names, nd.name) } },
      el('b', {}, nd.name + (nd.self ? ' (this node)' : '')),
      el('span', { class: 'muted' }, `${p.backend || '?'} · ${fixed(p.decode_gbps)} GB/s decode`), el('br'),
      el('span', {}, `memory ${bytes(used)} used of ${bytes(p.memory_total)}, ${bytes(p.memory_offered)} offered`),
      el('div', { class: 'bar' }, el('i', { style: { width: `${share}%` } })));
  }));
}

// One loaded instance: its layer map (node -> layers, memory per stage) and live figures.
export function instanceCard(inst, status, names, rate, onUnload) {
  const st = (status && status.stages) || [];
  const total = inst.stages.length ? inst.stages[inst.stages.length - 1].end : 1;
  const map = el('div', { class: 'layer-map' }, inst.stages.map((s, i) => el('div', {
    class: 'stage', 'data-node': s.node, title: `${s.node}: layers ${s.begin}–${s.end}`,
    style: { flex: `${s.end - s.begin}`, '--c': colorOf(names, s.node) },
  }, `${s.node} ${s.begin}:${s.end}`)));
  const rows = inst.stages.map((s, i) => {
    const c = st[i];
    const perDecode = c && c.decodes ? (1e3 * c.compute_seconds) / c.decodes : null;
    return el('tr', {},
      el('td', {}, s.node), el('td', {}, `${s.begin}:${s.end}`),
      el('td', { class: 'num' }, bytes((inst.stage_memory_bytes || [])[i])),
      el('td', { class: 'num' }, c ? fixed(c.compute_seconds, 2) + ' s' : '–'),
      el('td', { class: 'num hide-narrow' }, fixed(perDecode, 2)));
  });
  const figures = [
    `${fixed(rate.gen)} tok/s generated`, `${fixed(rate.prompt)} tok/s prompt`,
    `queue ${status ? status.queue_depth : inst.waiting_requests}`, `active ${status ? status.active_requests : inst.active_requests}`,
    status && status.mean_ttft_seconds !== null ? `TTFT ${fixed(status.mean_ttft_seconds * 1e3, 0)} ms` : null,
    speculation(inst.speculation),
  ].filter(Boolean).join(' · ');
  return el('div', { class: 'instance', 'data-model': inst.model },
    el('header', {}, el('b', {}, inst.model),
      el('button', { type: 'button', class: 'unload', onclick: () => onUnload(inst.id) }, 'Unload')),
    el('div', { class: 'muted' }, `${inst.stages.length} stage(s), ${total} layers, context ${inst.context_length} × ${inst.sequences}`),
    map,
    el('div', { class: 'figures' }, figures),
    el('table', {}, el('tr', {}, el('th', {}, 'node'), el('th', {}, 'layers'), el('th', { class: 'num' }, 'memory'),
      el('th', { class: 'num' }, 'compute'), el('th', { class: 'num hide-narrow' }, 'ms/batch')), rows));
}

// Speculative decoding of an instance: its proposer, the share of proposals taken and the
// tokens each verify step gave (null when it does not speculate).
function speculation(sp) {
  if (!sp || sp.draft === 'none') return null;
  if (sp.acceptance === null || sp.acceptance === undefined) return `draft ${sp.draft}`;
  return `draft ${sp.draft}: ${fixed(sp.acceptance * 100, 0)}% accepted, ${fixed(sp.tokens_per_verify, 2)} tokens/verify`;
}

// What a stage must receive before it loads: nothing, or bytes from a node (or the hub) and
// the seconds that takes over the measured link.
const toMove = (s) => (s.move_bytes ? `${bytes(s.move_bytes)} from ${s.move_from} (${fixed(s.move_seconds)} s)` : 'held');

// The candidates of a placement preview, each with a button that places it.
export function preview(box, p, names, onPlace) {
  box.replaceChildren(el('div', { class: 'muted' },
    `${p.model}: ${p.n_layer} layers, ${bytes(p.weight_bytes)} of weights${p.local ? '' : ' (not on the node yet)'}`),
  ...p.candidates.map((c) => {
    if (!c.fits) return el('div', { class: 'candidate bad', 'data-strategy': c.strategy }, `${c.strategy}: does not fit — ${c.error}`);
    return el('div', { class: 'candidate', 'data-strategy': c.strategy },
      el('div', { class: 'row' }, el('b', {}, c.strategy),
        el('span', {}, `${fixed(c.predicted_decode_tokens_per_second, 2)} tok/s predicted`),
        el('span', { class: 'muted' }, c.move_bytes ? `moves ${bytes(c.move_bytes)}, ~${fixed(c.move_seconds)} s` : 'moves nothing'),
        el('button', { type: 'button', class: 'place', onclick: () => onPlace(p.model, c.stages) }, 'Place')),
      el('div', { class: 'layer-map' }, c.stages.map((s) => el('div', {
        class: 'stage', style: { flex: `${s.end - s.begin}`, '--c': colorOf(names, s.node) },
      }, `${s.node} ${s.begin}:${s.end}`))),
      el('table', {}, c.stages.map((s) => el('tr', {}, el('td', {}, s.node), el('td', {}, `${s.begin}:${s.end}`),
        el('td', { class: 'num' }, `${bytes(s.memory_bytes)} / ${bytes(s.offered_bytes)}`),
        el('td', { class: 'num' }, `${fixed(100 * s.time_share)}% of time`),
        el('td', { class: 'num hide-narrow' }, toMove(s))))));
  }));
}
