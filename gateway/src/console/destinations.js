// Destinations: circuit breaker state, disabled by a `410 Gone`, and enable.

import { api, segment } from './api.js';
import { h, table, statusLine, action, reason } from './dom.js';

export function show(root) {
  const line = statusLine();
  const list = h('div');
  root.append(h('h2', {}, 'Destinations'), line.node, list);

  const load = async () => {
    const { destinations } = await api('/destinations');
    const rows = destinations.map((d) => [d.name, reason(d.url), d.breaker, d.disabled ? 'disabled (410 Gone)' : 'enabled',
      d.disabled ? action(line, 'Enable', async () => {
        await api(`/destinations/${segment(d.name)}/enable`, { method: 'POST' });
        return `${d.name} enabled`;
      }, load, { 'data-enable': d.name }) : '']);
    list.replaceChildren(table(['destination', 'url', 'breaker', 'state', ''], rows, { class: 'destinations' }));
  };
  load().catch(line.fail);
}
