// Lanes, live: each lane's depth (/v1/lanes) and runs (/v1/stats) every
// second, each campaign's share of its lane's run time and fuel, and charts
// of the last hour, kept in this tab while it is open.

import { api } from './api.js';
import { h, svg, table, statusLine, ms, percent, causes } from './dom.js';

const EVERY_MS = 1000;
const HOUR_MS = 3_600_000;
/** Runs per second are taken over this much of the history. */
const RATE_WINDOW_MS = 10_000;
const LANES = ['speed', 'segmentation', 'care'];

/** `{ at, lanes: { lane: { runs, backlog } } }`, oldest first. */
const history = [];

const ran = (runs) => runs.ok + Object.values(runs.failed).reduce((a, b) => a + b, 0);

function remember(depths, stats) {
  const at = Date.now();
  const lanes = Object.fromEntries(LANES.map((lane) => [lane, { runs: ran(stats.lanes[lane]), backlog: depths[lane].backlog }]));
  history.push({ at, lanes });
  while (history[0].at < at - HOUR_MS) history.shift();
}

/** Runs per second of `lane` between two samples. */
const rate = (from, to, lane) => (to.lanes[lane].runs - from.lanes[lane].runs) / Math.max((to.at - from.at) / 1000, 0.001);

function currentRate(lane) {
  const last = history.at(-1);
  const first = history.find((sample) => sample.at >= last.at - RATE_WINDOW_MS);
  return first === last ? null : rate(first, last, lane);
}

function lanesTable(depths, stats) {
  const rows = LANES.map((lane) => {
    const depth = depths[lane];
    const runs = stats.lanes[lane];
    const perSecond = currentRate(lane);
    return [lane, depth.queued, depth.running, depth.backlog, perSecond == null ? '—' : perSecond.toFixed(1),
      ms(runs.p50_seconds), ms(runs.p99_seconds), runs.ok, causes(runs.failed), runs.refused];
  });
  const columns = ['lane', 'queued', 'running', 'backlog', 'runs/s', 'p50 run', 'p99 run', 'ok', 'failed', 'refused'];
  return table(columns, rows, { class: 'lanes' });
}

function campaignsTable(stats) {
  const rows = stats.campaigns.map((c) => [c.name, c.lane, ran(c), causes(c.failed), c.refused,
    ms(c.p99_seconds), percent(c.run_share), percent(c.fuel_share)]);
  const columns = ['campaign', 'lane', 'runs', 'failed', 'refused', 'p99 run', 'share of run time', 'share of fuel'];
  return table(columns, rows, { class: 'campaign-runs' });
}

const WIDTH = 600;
const HEIGHT = 120;

/** A line per lane of `value(previous, sample, lane)` since the first sample kept. */
function chart(title, value) {
  const now = history.at(-1).at;
  // The time kept so far, up to an hour, fills the width.
  const span = Math.max(now - history[0].at, EVERY_MS);
  const series = LANES.map((lane) => history.slice(1).map((sample, i) => [sample.at, value(history[i], sample, lane)]));
  const top = Math.max(1, ...series.flat().map(([, v]) => v));
  const x = (at) => WIDTH - (WIDTH * (now - at)) / span;
  // Room above for the scale's label, and a zero line inside the frame.
  const y = (v) => HEIGHT - 2 - ((HEIGHT - 20) * v) / top;
  const lines = series.map((points, i) => svg('polyline', {
    class: `lane-${LANES[i]}`,
    points: points.map(([at, v]) => `${x(at).toFixed(1)},${y(v).toFixed(1)}`).join(' '),
  }));
  return h('figure', {},
    svg('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img', 'aria-label': title },
      svg('rect', { width: WIDTH, height: HEIGHT }), ...lines,
      svg('text', { x: 4, y: 14 }, top.toPrecision(3))),
    h('figcaption', {}, `${title} since ${new Date(history[0].at).toLocaleTimeString()}, an hour at most (`, ...LANES.map((lane) => h('span', { class: `lane-${lane}` }, `■ ${lane} `)), ')'));
}

export function show(root) {
  const line = statusLine();
  const view = h('div');
  root.append(h('h2', {}, 'Lanes'), line.node, view);
  let stopped = false;
  let timer;
  const poll = async () => {
    try {
      const [{ lanes: depths }, stats] = await Promise.all([api('/lanes'), api('/stats')]);
      if (stopped) return;
      remember(depths, stats);
      view.replaceChildren(lanesTable(depths, stats),
        h('p', { class: 'note' }, 'Runs, failures, refusals and percentiles since the gateway started; runs/s over the last 10 s.'),
        chart('Runs per second', rate),
        chart('Backlog', (_, sample, lane) => sample.lanes[lane].backlog),
        h('h3', {}, 'Campaigns since the gateway started'), campaignsTable(stats));
      line.ok(`Updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      line.fail(error);
    }
    if (!stopped) timer = setTimeout(poll, EVERY_MS);
  };
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
