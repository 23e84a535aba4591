// Dead letters: filter by campaign, inspect one (its attempts and body),
// replay one or all that match.

import { api, segment } from './api.js';
import { h, table, statusLine, action, when, reason } from './dom.js';

export function show(root) {
  const line = statusLine();
  const filter = h('select', { name: 'campaign' }, h('option', { value: '' }, 'all campaigns'));
  const replayAll = h('span');
  const list = h('div');
  const inspected = h('div');
  root.append(h('h2', {}, 'Dead letters'),
    h('p', { class: 'filter' }, h('label', {}, 'Campaign ', filter), replayAll), line.node, list, inspected);

  const query = () => (filter.value ? `?campaign=${segment(filter.value)}` : '');

  const inspect = async (id) => {
    const dead = await api(`/dead-letters/${id}`);
    const attempts = dead.attempts.map((a) => [when(a.at_ms), a.cause, reason(a.detail)]);
    inspected.replaceChildren(h('h3', {}, `Dead letter ${dead.id}: ${dead.kind} of ${dead.campaign}`),
      h('p', {}, `event ${dead.event_id}`, dead.destination ? `, to ${dead.destination}` : ''),
      table(['at', 'cause', 'detail'], attempts, { class: 'attempts' }),
      h('h4', {}, 'Body'), h('pre', { class: 'body' }, dead.body));
  };

  const load = async () => {
    const { dead_letters: dead } = await api(`/dead-letters${query()}`);
    const rows = dead.map((d) => {
      const last = d.attempts.at(-1);
      const open = h('button', { type: 'button', 'data-inspect': d.id, onclick: () => inspect(d.id).catch(line.fail) }, 'Inspect');
      const replay = action(line, 'Replay', async () => {
        await api(`/dead-letters/${d.id}/replay`, { method: 'POST' });
        return `Dead letter ${d.id} replayed`;
      }, load, { 'data-replay': d.id });
      return [d.id, d.kind, d.campaign, d.event_id, d.destination ?? '', when(d.dead_at_ms), d.attempts.length,
        last ? reason(`${last.cause}: ${last.detail}`) : '', h('span', { class: 'actions' }, open, replay)];
    });
    const columns = ['id', 'kind', 'campaign', 'event', 'destination', 'dead since', 'attempts', 'last attempt', ''];
    list.replaceChildren(dead.length ? table(columns, rows, { class: 'dead-letters' }) : h('p', { class: 'empty' }, 'No dead letters.'));
    replayAll.replaceChildren(dead.length ? action(line, `Replay all ${dead.length}`, async () => {
      const { replayed } = await api(`/dead-letters/replay${query()}`, { method: 'POST' });
      return `Replayed ${replayed}`;
    }, load, { id: 'replay-all' }) : '');
  };

  const loadCampaigns = async () => {
    const { campaigns } = await api('/campaigns');
    filter.append(...campaigns.map((c) => h('option', { value: c.name }, c.name)));
  };

  filter.addEventListener('change', () => {
    inspected.replaceChildren();
    load().catch(line.fail);
  });
  Promise.all([loadCampaigns(), load()]).catch(line.fail);
}
