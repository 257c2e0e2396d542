/* Small helpers of the dashboard: building elements safely, and formatting numbers. */

export const $ = (id) => document.getElementById(id);

// The only way the dashboard makes elements: text goes in as textContent, never as HTML.
export function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined && options.text !== null) node.textContent = String(options.text);
  if (options.title) node.title = options.title;
  for (const [name, value] of Object.entries(options.attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

const missing = (x) => x === null || x === undefined;

// Decimal units, as network traffic is usually counted: 1 kB = 1000 bytes.
export function fmtBytes(n) {
  if (missing(n)) return '–';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toPrecision(3)} ${units[unit]}`;
}

export const fmtPct = (x) => (missing(x) ? '–' : `${(100 * x).toFixed(2)} %`);
export const fmtNum = (x, digits = 4) => (missing(x) ? '–' : Number(x).toPrecision(digits));
export const fmtInt = (x) => (missing(x) ? '–' : Number(x).toLocaleString('en-US'));
export const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : '–');

export function fmtDuration(seconds) {
  if (missing(seconds)) return '–';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// Node ids are 64-bit; the API sends them as decimal text, and they are compared as BigInt.
export const byNodeId = (a, b) => (BigInt(a) < BigInt(b) ? -1 : BigInt(a) > BigInt(b) ? 1 : 0);
export const shortNode = (id) => (id.length > 8 ? `…${id.slice(-6)}` : id);

// Clients are shown by their client id (the SuperNode's node-config `client-id`, e.g.
// client-0), the node id second: Flower gives a SuperNode a new node id when it reconnects.
export const clientNames = (clients) => new Map(clients.filter((c) => c.client_id).map((c) => [c.node_id, c.client_id]));
export const clientLabel = (names, node) => names.get(node) || shortNode(node);

const natural = new Intl.Collator('en', { numeric: true });

// Named clients first, in natural order (client-2 before client-10), then the rest by node id.
export function byClient(names) {
  return (a, b) => {
    const [x, y] = [names.get(a), names.get(b)];
    if (x && y) return natural.compare(x, y) || byNodeId(a, b);
    if (x || y) return x ? -1 : 1;
    return byNodeId(a, b);
  };
}
