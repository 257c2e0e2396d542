/* The dashboard's non-chart views: run header, totals, participation heatmap and tables. */

import {
  $, byClient, clientLabel, clientNames, el, fmtBytes, fmtDuration, fmtInt, fmtNum, fmtPct, fmtTime,
} from './format.js';

const MAX_REASON_ROWS = 200;

export function renderHeader(run) {
  // Runs are named by their run directory (time, strategy); Flower's run id comes second.
  $('run-title').textContent = run.name || run.run_id;
  const status = $('run-status');
  status.textContent = run.status;
  status.className = `badge ${run.status}`;
  const totals = run.totals || {};
  const meta = [
    ['run id', run.run_id],
    ['strategy', run.strategy || '–'],
    ['model', run.model || '–'],
    ['parameters', fmtInt(run.num_parameters)],
    ['clients expected', fmtInt(run.clients_expected)],
    ['started', fmtTime(run.started_at)],
    [run.finished_at ? 'ended' : 'last report', fmtTime(run.finished_at || run.last_report_at)],
    ['elapsed', fmtDuration(totals.elapsed_seconds)],
  ];
  $('run-meta').replaceChildren(...meta.map(([term, value]) => el('div', {}, [el('dt', { text: term }), el('dd', { text: value })])));
  const stale = run.status === 'stale'
    ? `Stale: no word from this run's ServerApp since ${fmtTime(run.last_seen_at)}; it has probably died.`
    : '';
  const reason = run.reason ? `Failed: ${run.reason}` : stale;
  $('run-reason').hidden = !reason;
  $('run-reason').textContent = reason;
}

const MAX_NON_FINITE_ROUNDS = 10;

// Rounds whose metrics were NaN or infinite: stored as null, named here (newest last).
function renderNonFinite(rounds) {
  const bad = rounds.filter((r) => r.non_finite && r.non_finite.length);
  const shown = bad.slice(-MAX_NON_FINITE_ROUNDS).map((r) => `round ${r.round}: ${r.non_finite.join(', ')}`);
  const more = bad.length > shown.length ? ` (and ${bad.length - shown.length} earlier rounds)` : '';
  $('run-non-finite').hidden = bad.length === 0;
  $('run-non-finite').textContent = bad.length ? `Non-finite metrics (NaN or ±Inf): ${shown.join('; ')}${more}` : '';
}

// A tile's value, or "non-finite" when the latest round's value was NaN or infinite.
function metricText(last, name, text) {
  return last && last.non_finite && last.non_finite.includes(name) ? 'non-finite' : text;
}

function setTile(id, value, sub) {
  $(`tile-${id}`).textContent = value;
  $(`tile-${id}-sub`).textContent = sub || '';
}

// How the bytes compare with the same traffic as dense fp32 messages.
function versusFp32(actual, fp32) {
  if (!fp32) return '';
  const ratio = fp32 / Math.max(actual, 1);
  if (Math.abs(ratio - 1) < 0.005) return `same as fp32 (${fmtBytes(fp32)})`;
  return ratio > 1
    ? `${ratio.toFixed(2)}× below fp32 (${fmtBytes(fp32)})`
    : `${(1 / ratio).toFixed(2)}× above fp32 (${fmtBytes(fp32)})`;
}

export function renderTiles(run, rounds) {
  const totals = run.totals || {};
  const last = rounds[rounds.length - 1];
  setTile('rounds', fmtInt(run.rounds_done), run.clients_expected ? `${run.clients_expected} clients expected` : '');
  setTile('accuracy', metricText(last, 'accuracy', fmtPct(totals.last_accuracy ?? run.last_accuracy)), totals.best_accuracy != null ? `best ${fmtPct(totals.best_accuracy)}` : '');
  setTile('loss', metricText(last, 'loss', fmtNum(totals.last_loss)), last && last.train_loss != null ? `train ${fmtNum(last.train_loss)}` : '');
  renderNonFinite(rounds);
  setTile('up', fmtBytes(totals.bytes_up), versusFp32(totals.bytes_up, totals.fp32_bytes_up));
  setTile('down', fmtBytes(totals.bytes_down), versusFp32(totals.bytes_down, totals.fp32_bytes_down));
  const rejected = totals.rejected || 0;
  const failures = totals.failures || 0;
  setTile('rejected', fmtInt(rejected + failures), `${rejected} rejected · ${failures} failed`);
}

// ---------------------------------------------------------------- participation heatmap

function cellState(round, node) {
  if (round.rejected.some((r) => r.node_id === node)) return 'rejected';
  if (round.failures.some((r) => r.node_id === node)) return 'failed';
  if (round.participants.includes(node)) return 'participated';
  if (round.non_participants.includes(node)) return 'skipped';
  return 'absent';
}

function heatmapNodes(rounds, clients, names) {
  const nodes = new Set(clients.map((c) => c.node_id));
  for (const r of rounds) {
    r.participants.forEach((n) => nodes.add(n));
    r.non_participants.forEach((n) => nodes.add(n));
    r.failures.forEach((f) => nodes.add(f.node_id));
    r.rejected.forEach((f) => nodes.add(f.node_id));
  }
  return [...nodes].sort(byClient(names));
}

export function renderHeatmap(rounds, clients) {
  // Round 0 evaluates the initial model; it has a column only if it names clients.
  const columns = rounds.filter((r) => r.round > 0 || r.participants.length || r.non_participants.length);
  const names = clientNames(clients);
  const nodes = heatmapNodes(columns, clients, names);
  const grid = $('heatmap');
  grid.style.gridTemplateColumns = `max-content repeat(${Math.max(columns.length, 1)}, minmax(8px, 1fr))`;
  const every = Math.max(1, Math.ceil(columns.length / 25));
  const cells = [el('span', { className: 'hm-label', text: 'client \\ round' })];
  columns.forEach((r, i) => cells.push(el('span', { className: 'hm-round', text: i % every === 0 ? r.round : '' })));
  for (const node of nodes) {
    const label = clientLabel(names, node);
    cells.push(el('span', { className: 'hm-label node', text: label, title: `node ${node}` }));
    for (const r of columns) {
      const kind = cellState(r, node);
      cells.push(el('span', {
        className: `hm-cell ${kind}`,
        title: `${label} (node ${node}), round ${r.round}: ${kind}`,
        attrs: { 'data-node': node, 'data-round': String(r.round), 'data-state': kind },
      }));
    }
  }
  grid.replaceChildren(...cells);
}

// ---------------------------------------------------------------- tables

// A lone strategy chart leaves half a row free; the reasons table takes it then.
export function fitReasonsCard() {
  const strategyCards = ['card-fedau', 'card-consensus'].filter((id) => !$(id).hidden).length;
  $('card-rejected').classList.toggle('wide', strategyCards !== 1);
}

export function renderReasons(rounds, clients) {
  const names = clientNames(clients);
  const rows = [];
  for (const r of [...rounds].reverse()) {
    r.rejected.forEach((item) => rows.push([r.round, item, 'rejected']));
    r.failures.forEach((item) => rows.push([r.round, item, 'failed']));
  }
  $('rejected-empty').hidden = rows.length > 0;
  $('rejected-table').hidden = rows.length === 0;
  $('rejected-table').tBodies[0].replaceChildren(...rows.slice(0, MAX_REASON_ROWS).map(([round, item, kind]) => el('tr', {}, [
    el('td', { className: 'num', text: round }),
    el('td', { className: 'node', text: clientLabel(names, item.node_id), title: `node ${item.node_id}` }),
    el('td', { className: `kind-${kind}`, text: kind }),
    el('td', { className: 'reason', text: item.reason }),
  ])));
}

// A strategy's per-client figures (FedAU's weight, LoDAdaC's distance to the average), by name.
function fmtFigures(figures) {
  return Object.keys(figures || {}).sort().map((name) => `${name.replaceAll('_', ' ')} ${fmtNum(figures[name])}`).join(', ');
}

export function renderClients(clients) {
  const names = clientNames(clients);
  const order = byClient(names);
  const sorted = [...clients].sort((a, b) => order(a.node_id, b.node_id));
  $('clients-table').tBodies[0].replaceChildren(...sorted.map((c) => el('tr', { attrs: { 'data-node': c.node_id } }, [
    el('td', { className: 'client' }, [
      el('span', { className: 'client-name', text: clientLabel(names, c.node_id) }),
      el('span', { className: 'node-id', text: `node ${c.node_id}` }),
    ]),
    el('td', { className: 'num', text: fmtInt(c.rounds_participated) }),
    el('td', { className: 'num', text: c.last_seen_round ?? '–', title: fmtTime(c.last_seen_at) }),
    el('td', { className: 'num', text: fmtBytes(c.bytes_up) }),
    el('td', { className: 'num', text: fmtBytes(c.bytes_down) }),
    el('td', { className: 'num', text: fmtInt(c.num_examples) }),
    el('td', { className: 'num', text: fmtNum(c.train_loss) }),
    el('td', { className: 'figures', text: fmtFigures(c.figures) }),
    el('td', { className: 'num', text: fmtInt(c.rejections) }),
    el('td', { className: 'num', text: fmtInt(c.failures) }),
    el('td', { className: 'reason', text: c.last_reason || '' }),
  ])));
}

export function renderConfig(run) {
  const config = run.config || {};
  $('config-table').tBodies[0].replaceChildren(...Object.keys(config).sort().map((key) => el('tr', {}, [
    el('th', { text: key }),
    el('td', { text: typeof config[key] === 'string' ? config[key] : JSON.stringify(config[key]) }),
  ])));
}
