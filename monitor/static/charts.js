/* The dashboard's charts (Chart.js, vendored): made once, then fed each run's rounds. */

import { $, clientLabel, clientNames, fmtBytes } from './format.js';

const COLORS = {
  blue: '#2563eb',
  teal: '#0d9488',
  rose: '#e11d48',
  violet: '#7c3aed',
  amber: '#d97706',
  grey: '#94a3b8',
};
const dashed = { borderDash: [6, 4], pointRadius: 0, borderWidth: 1.5 };
const bytesAxis = { beginAtZero: true, ticks: { callback: (v) => fmtBytes(v) } };
const roundAxis = { title: { display: true, text: 'round' } };
const charts = {};

export function setChartDefaults() {
  Chart.defaults.font.family = getComputedStyle(document.documentElement).fontFamily;
  Chart.defaults.color = '#4b5563';
  Chart.defaults.borderColor = '#e5e7eb';
}

function lineSet(label, data, color, extra = {}) {
  return {
    type: 'line', label, data, borderColor: color, backgroundColor: color,
    borderWidth: 2, pointRadius: data.length > 60 ? 0 : 2.5, spanGaps: true, tension: 0.15, ...extra,
  };
}

function barSet(label, data, color) {
  return { type: 'bar', label, data, backgroundColor: `${color}cc`, borderColor: color, borderWidth: 1 };
}

function chart(id, type, options) {
  if (!charts[id]) {
    charts[id] = new Chart($(id), {
      type,
      data: { labels: [], datasets: [] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: 'index', intersect: false },
        plugins: { legend: { labels: { boxWidth: 12, boxHeight: 12 } } },
        ...options,
      },
    });
  }
  return charts[id];
}

function setData(instance, labels, datasets) {
  instance.data.labels = labels;
  instance.data.datasets = datasets;
  instance.update('none');
}

const pick = (rounds, key) => rounds.map((r) => (r[key] === undefined ? null : r[key]));
const any = (values) => values.some((v) => v !== null && v !== 0);

// Draw every chart from the run's rounds (sorted) and its clients.
export function renderCharts(rounds, clients) {
  const labels = rounds.map((r) => r.round);
  setData(chart('chart-accuracy', 'line', {
    scales: {
      x: roundAxis,
      y: { min: 0, max: 1, title: { display: true, text: 'accuracy' }, ticks: { callback: (v) => `${Math.round(v * 100)}%` } },
      y1: { position: 'right', beginAtZero: true, title: { display: true, text: 'loss' }, grid: { drawOnChartArea: false } },
    },
  }), labels, [
    lineSet('accuracy', pick(rounds, 'accuracy'), COLORS.blue, { yAxisID: 'y' }),
    lineSet('loss', pick(rounds, 'loss'), COLORS.rose, { yAxisID: 'y1' }),
  ]);
  renderBytesCharts(rounds, labels);
  renderBitsChart(rounds, labels);
  renderFedauChart(clients);
  renderConsensusChart(rounds, labels);
}

// Each series beside its dense fp32 equivalent (dashed), when the run reports one.
function withFp32(rounds, series) {
  const datasets = [];
  for (const [label, key, , color, kind] of series) {
    datasets.push(kind === 'bar' ? barSet(label, pick(rounds, key), color) : lineSet(label, pick(rounds, key), color));
  }
  for (const [label, , fp32Key, color] of series) {
    const fp32 = pick(rounds, fp32Key);
    if (any(fp32)) datasets.push(lineSet(`fp32 ${label}`, fp32, color, dashed));
  }
  return datasets;
}

function renderBytesCharts(rounds, labels) {
  setData(chart('chart-bytes', 'bar', { scales: { x: roundAxis, y: bytesAxis } }), labels, withFp32(rounds, [
    ['uplink', 'bytes_up', 'fp32_bytes_up', COLORS.blue, 'bar'],
    ['downlink', 'bytes_down', 'fp32_bytes_down', COLORS.teal, 'bar'],
  ]));
  setData(chart('chart-cumulative', 'line', { scales: { x: roundAxis, y: bytesAxis } }), labels, withFp32(rounds, [
    ['uplink', 'cum_bytes_up', 'cum_fp32_bytes_up', COLORS.blue, 'line'],
    ['downlink', 'cum_bytes_down', 'cum_fp32_bytes_down', COLORS.teal, 'line'],
  ]));
}

function renderBitsChart(rounds, labels) {
  const datasets = [lineSet('uplink', pick(rounds, 'uplink_bits_per_param'), COLORS.blue)];
  const down = pick(rounds, 'downlink_bits_per_param');
  if (any(down)) datasets.push(lineSet('downlink', down, COLORS.teal));
  datasets.push(lineSet('fp32 payload (32 bits)', labels.map(() => 32), COLORS.grey, dashed));
  setData(chart('chart-bits', 'line', {
    scales: { x: roundAxis, y: { beginAtZero: true, title: { display: true, text: 'bits / parameter' } } },
  }), labels, datasets);
}

function renderFedauChart(clients) {
  const weighted = clients.filter((c) => c.fedau_weight !== null && c.fedau_weight !== undefined);
  $('card-fedau').hidden = weighted.length === 0;
  if (!weighted.length) return;
  setData(chart('chart-fedau', 'bar', {
    scales: { y: { beginAtZero: true, title: { display: true, text: 'weight' } }, x: { title: { display: true, text: 'client' } } },
    plugins: { legend: { display: false }, tooltip: { callbacks: { title: (items) => `node ${items[0].chart.data.nodeIds[items[0].dataIndex]}` } } },
  }), weighted.map((c) => clientLabel(clientNames(weighted), c.node_id)), [barSet('FedAU weight', weighted.map((c) => c.fedau_weight), COLORS.violet)]);
  charts['chart-fedau'].data.nodeIds = weighted.map((c) => c.node_id);
}

function renderConsensusChart(rounds, labels) {
  const distance = rounds.map((r) => (r.figures && r.figures.consensus_distance !== undefined ? r.figures.consensus_distance : null));
  const present = distance.some((v) => v !== null);
  $('card-consensus').hidden = !present;
  if (!present) return;
  setData(chart('chart-consensus', 'line', {
    scales: { x: roundAxis, y: { beginAtZero: true, title: { display: true, text: 'distance' } } },
    plugins: { legend: { display: false } },
  }), labels, [lineSet('consensus distance', distance, COLORS.amber)]);
}
