/* fedq monitor dashboard: reads the REST API and follows the selected run's event stream.
 *
 * Every string that comes from the API (run ids, node ids, reasons, config values) is placed
 * with textContent or as a chart label drawn on a canvas; nothing is ever parsed as HTML.
 */
import { renderCharts, setChartDefaults } from './charts.js';
import { $, el } from './format.js';
import {
  fitReasonsCard, renderClients, renderConfig, renderHeader, renderHeatmap, renderReasons, renderTiles,
} from './views.js';

const TOKEN_KEY = 'fedq-monitor-read-token';
const RUNS_POLL_MS = 5000;
const RECONNECT_MS = 2000;
const REFRESH_DEBOUNCE_MS = 300;

const state = {
  runs: [],
  runId: null,
  // Until the user picks a run (or the URL names one), show the running run, else the newest.
  followNewest: true,
  run: null,
  rounds: new Map(),
  clients: [],
  lastRound: -1,
  clientsRound: -1,
  stream: null,
  renderQueued: false,
  refreshTimer: null,
};

// ---------------------------------------------------------------- API access

class AuthRequired extends Error {}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: 'application/json', ...authHeaders() }, cache: 'no-store' });
  if (response.status === 401) {
    $('token-form').hidden = false;
    throw new AuthRequired('read token required');
  }
  if (!response.ok) {
    const error = new Error(`${path}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

const runPath = (runId, tail = '') => `/api/runs/${encodeURIComponent(runId)}${tail}`;

function setConnection(kind, text) {
  $('connection').dataset.state = kind;
  $('connection-text').textContent = text;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// ---------------------------------------------------------------- run list

async function loadRuns() {
  try {
    state.runs = await api('/api/runs?limit=200');
    renderRunList();
    followNewest();
  } catch (error) {
    if (!(error instanceof AuthRequired)) setConnection('error', 'monitor unreachable');
  }
}

// The run list comes newest first. Follow the newest running run; with none running, open
// the newest run if none is open yet (a run that just finished stays on screen).
function followNewest() {
  if (!state.followNewest) return;
  const running = state.runs.find((run) => run.status === 'running');
  const preferred = running || (state.runId === null ? state.runs[0] : undefined);
  if (preferred && preferred.run_id !== state.runId) selectRun(preferred.run_id);
}

function renderRunList() {
  $('runs-empty').hidden = state.runs.length > 0;
  $('run-list').replaceChildren(...state.runs.map((run) => {
    // A run is named by its run directory (time, strategy); Flower's run id comes second.
    const button = el('button', { attrs: { type: 'button', 'data-run-id': run.run_id } }, [
      el('span', { className: 'run-name', text: run.name || run.run_id, title: run.name || run.run_id }),
      el('span', { className: 'run-id', text: run.run_id, title: `Flower run id ${run.run_id}` }),
      el('span', { className: 'run-line' }, [
        el('span', { className: `badge ${run.status}`, text: run.status }),
        el('span', { text: `${run.strategy || '?'} · round ${run.rounds_done}` }),
      ]),
    ]);
    button.setAttribute('aria-current', String(run.run_id === state.runId));
    button.addEventListener('click', () => { location.hash = `run=${encodeURIComponent(run.run_id)}`; });
    return el('li', {}, [button]);
  }));
}

// ---------------------------------------------------------------- selecting and following a run

function runIdFromHash() {
  const match = /^#run=(.+)$/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

async function selectRun(runId) {
  if (state.stream) state.stream.abort();
  Object.assign(state, { runId, run: null, rounds: new Map(), clients: [], lastRound: -1, clientsRound: -1, stream: null });
  $('no-run').hidden = runId !== null;
  $('run-content').hidden = true;
  renderRunList();
  if (runId === null) return;
  try {
    const [run, rounds, clients] = await Promise.all([
      api(runPath(runId)), api(runPath(runId, '/rounds')), api(runPath(runId, '/clients')),
    ]);
    if (state.runId !== runId) return;
    Object.assign(state, { run, clients });
    rounds.forEach(addRound);
    state.clientsRound = state.lastRound;
  } catch (error) {
    if (state.runId === runId) showLoadError(runId, error);
    return;
  }
  $('run-content').hidden = false;
  renderAll();
  state.stream = new AbortController();
  follow(runId, state.stream.signal);
}

function showLoadError(runId, error) {
  $('no-run').hidden = false;
  $('no-run').firstElementChild.textContent = error.status === 404
    ? `The monitor knows no run "${runId}".` : `Could not load the run: ${error.message}`;
}

function addRound(round) {
  state.rounds.set(round.round, round);
  state.lastRound = Math.max(state.lastRound, round.round);
}

// Follow the run's event stream, reconnecting from the last round held, until the run ends.
async function follow(runId, signal) {
  while (!signal.aborted) {
    try {
      const url = runPath(runId, `/events?since=${state.lastRound}`);
      const response = await fetch(url, { headers: { Accept: 'text/event-stream', ...authHeaders() }, signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      setConnection('live', 'live');
      await readEvents(response.body, (event) => { if (state.runId === runId) onEvent(event); });
    } catch (error) {
      if (signal.aborted) return;
      setConnection('reconnecting', 'reconnecting…');
    }
    if (signal.aborted) return;
    // A stale run may still come back (its reports were only delayed): keep following it.
    if (state.run && (state.run.status === 'finished' || state.run.status === 'failed')) {
      setConnection('idle', `run ${state.run.status}`);
      return;
    }
    await sleep(RECONNECT_MS, signal);
  }
}

// EventSource cannot send an Authorization header, so the stream is read with fetch.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, '\n');
    let cut = buffer.indexOf('\n\n');
    while (cut >= 0) {
      const event = parseEvent(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (event) onEvent(event);
      cut = buffer.indexOf('\n\n');
    }
  }
}

function parseEvent(block) {
  let type = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  }
  return data.length ? { type, data: JSON.parse(data.join('\n')) } : null;
}

function onEvent(event) {
  if (event.type === 'round') {
    addRound(event.data);
  } else if (event.type === 'run') {
    state.run = { ...state.run, ...event.data };
    const listed = state.runs.find((run) => run.run_id === event.data.run_id);
    if (listed) Object.assign(listed, event.data);
    renderRunList();
  }
  queueRender();
  queueRefresh();
}

// Totals and client sums come from the API, fetched at most once per burst of events.
function queueRefresh() {
  clearTimeout(state.refreshTimer);
  const runId = state.runId;
  if (runId === null) return;
  state.refreshTimer = setTimeout(async () => {
    const asOf = state.lastRound;
    try {
      const [run, clients] = await Promise.all([api(runPath(runId)), api(runPath(runId, '/clients'))]);
      if (state.runId !== runId) return;
      Object.assign(state, { run, clients, clientsRound: Math.max(state.clientsRound, asOf) });
      queueRender();
    } catch (error) {
      // The next event or reconnect refreshes again.
    }
  }, REFRESH_DEBOUNCE_MS);
}

function queueRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    renderAll();
  });
}

function renderAll() {
  if (!state.run) return;
  const rounds = [...state.rounds.values()].sort((a, b) => a.round - b.round);
  renderHeader(state.run);
  renderTiles(state.run, rounds);
  renderCharts(rounds, state.clients);
  renderHeatmap(rounds, state.clients);
  renderReasons(rounds, state.clients);
  fitReasonsCard();
  renderClients(state.clients);
  renderConfig(state.run);
  // Progress markers for tests and scripts: the last round drawn, and the last round the
  // totals and client sums were fetched after.
  document.body.dataset.renderedRound = String(state.lastRound);
  document.body.dataset.clientsRound = String(state.clientsRound);
}

// ---------------------------------------------------------------- start

function start() {
  setChartDefaults();
  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token-input').value);
    $('token-form').hidden = true;
    loadRuns();
    selectRun(runIdFromHash());
  });
  window.addEventListener('hashchange', () => {
    state.followNewest = runIdFromHash() === null;
    selectRun(runIdFromHash());
  });
  state.followNewest = runIdFromHash() === null;
  loadRuns();
  setInterval(loadRuns, RUNS_POLL_MS);
  if (!state.followNewest) selectRun(runIdFromHash());
}

start();
