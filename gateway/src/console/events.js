// Events: this node's recent runs (the last 100 events of each campaign),
// filtered by campaign and by how they ended; one event's runs with what
// each asked for and the tries before.

import { api, segment } from './api.js';
import { h, table, statusLine, when, reason } from './dom.js';

const ENDINGS = ['ok', 'failed', 'retrying', 'dead'];

export function show(root) {
  const line = statusLine();
  const campaign = h('select', { name: 'campaign' }, h('option', { value: '' }, 'all campaigns'));
  const ended = h('select', { name: 'ended' }, h('option', { value: '' }, 'any outcome'),
    ...ENDINGS.map((e) => h('option', { value: e }, e)));
  const list = h('div');
  const inspected = h('div');
  root.append(h('h2', {}, 'Events'),
    h('p', { class: 'filter' }, h('label', {}, 'Campaign ', campaign), ' ', h('label', {}, 'Outcome ', ended)),
    line.node, list, inspected);

  const query = () => {
    const params = new URLSearchParams();
    if (campaign.value) params.set('campaign', campaign.value);
    if (ended.value) params.set('ended', ended.value);
    const text = params.toString();
    return text ? `?${text}` : '';
  };

  const describe = (run) => {
    const { actions } = run;
    const planned = [
      ...actions.deliveries.map((d) => ['delivery', d.id, `to ${d.destination}`, d.not_before_ms ? `after ${when(d.not_before_ms)}` : '']),
      ...actions.emits.map((e) => ['emit', e.event_id, `to ${e.campaigns.join(', ')}`, e.not_before_ms ? `after ${when(e.not_before_ms)}` : '']),
      ...actions.kv.map((k) => ['kv', k.key, k.op, '']),
    ];
    const tries = run.attempts.map((a) => [when(a.at_ms), a.cause, reason(a.detail)]);
    return h('article', { class: 'run', 'data-campaign': run.campaign },
      h('h4', {}, `${run.campaign} (${run.mode}, ${run.version}): ${run.ended}`),
      h('p', {}, `${run.run_ms.toFixed(2)} ms, ${run.fuel} fuel, ended ${when(run.at_ms)}`,
        actions.reply_status ? `, answered ${actions.reply_status}` : ''),
      run.cause ? h('p', { class: 'error' }, reason(`${run.cause}: ${run.detail}`)) : '',
      planned.length ? table(['action', 'id / key', 'target', 'when'], planned, { class: 'planned' }) : h('p', { class: 'empty' }, 'No actions.'),
      tries.length ? [h('h5', {}, 'Earlier tries'), table(['at', 'cause', 'detail'], tries, { class: 'attempts' })] : '');
  };

  const inspect = async (eventId) => {
    const { runs } = await api(`/events/${segment(eventId)}`);
    inspected.replaceChildren(h('h3', {}, `Event ${eventId}`), ...runs.map(describe));
  };

  const load = async () => {
    const { runs } = await api(`/events${query()}`);
    const rows = runs.map((r) => [when(r.at_ms), r.campaign, r.event_id, r.mode, r.ended, `${r.run_ms.toFixed(2)} ms`,
      r.actions.deliveries.length + r.actions.emits.length + r.actions.kv.length,
      r.cause ? reason(r.cause) : '',
      h('button', { type: 'button', 'data-inspect': r.event_id, onclick: () => inspect(r.event_id).catch(line.fail) }, 'Inspect')]);
    const columns = ['ended at', 'campaign', 'event', 'mode', 'outcome', 'run', 'actions', 'cause', ''];
    list.replaceChildren(runs.length ? table(columns, rows, { class: 'events' }) : h('p', { class: 'empty' }, 'No runs kept.'));
  };

  const loadCampaigns = async () => {
    const { campaigns } = await api('/campaigns');
    campaign.append(...campaigns.map((c) => h('option', { value: c.name }, c.name)));
  };

  for (const select of [campaign, ended]) {
    select.addEventListener('change', () => {
      inspected.replaceChildren();
      load().catch(line.fail);
    });
  }
  Promise.all([loadCampaigns(), load()]).catch(line.fail);
}
