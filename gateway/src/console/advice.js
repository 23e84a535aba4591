// Advice: which lane and mode fit each campaign, and why, naming the
// figures (/v1/advice: the gateway decides; this page only shows it).

import { api } from './api.js';
import { h, table, statusLine, action } from './dom.js';

/** The suggestion, as `→ segmentation, async`; nothing when none. */
function suggestion(advice) {
  const to = [advice.suggested_lane, advice.suggested_mode].filter(Boolean);
  return to.length ? `→ ${to.join(', ')}` : '';
}

export function show(root) {
  const line = statusLine();
  const list = h('div');
  const load = async () => {
    const report = await api('/advice');
    const rows = report.campaigns.map((a) => [a.campaign, a.lane, a.mode, a.figures.runs,
      h('span', { class: `verdict verdict-${a.verdict}` }, a.verdict.replaceAll('_', ' ')), suggestion(a),
      h('ul', { class: 'reasons' }, a.reasons.map((reason) => h('li', {}, reason)))]);
    list.replaceChildren(
      h('p', { class: 'note' }, `From each campaign's config and its runs since the gateway started; advice needs ${report.min_runs} runs.`),
      rows.length ? table(['campaign', 'lane', 'mode', 'runs', 'verdict', 'suggested', 'why'], rows, { class: 'advice' })
        : h('p', { class: 'empty' }, 'No campaigns.'));
    return `Updated ${new Date().toLocaleTimeString()}`;
  };
  const refresh = action(line, 'Refresh', load, async () => {}, { id: 'refresh-advice' });
  root.append(h('h2', {}, 'Advice'), h('p', { class: 'actions' }, refresh), line.node, list);
  load().then(line.ok, line.fail);
}
