// Campaigns: lane, mode, limits, status (running, throttled by its lane's
// guard, unavailable) and failures by cause; one
// campaign's stored versions, with deploy (upload a .wasm), a shadow run of
// an upload on the campaign's kept events (then deploy it), and rollback.

import { api, segment } from './api.js';
import { h, table, statusLine, action, when, reason, causes } from './dom.js';
import { shadowReport } from './shadow.js';

function status(c) {
  if (c.status !== 'running') return reason(`${c.status}: ${c.reason}`);
  return c.throttled ? reason(`throttled: ${c.throttled.reason}`) : 'running';
}

export function show(root) {
  const line = statusLine();
  const list = h('div');
  const versions = h('div');
  root.append(h('h2', {}, 'Campaigns'), line.node, list, versions);
  let selected = null;

  const loadList = async () => {
    const [{ campaigns }, stats] = await Promise.all([api('/campaigns'), api('/stats')]);
    // In the lane it runs in now (a reload may have moved it); none for a campaign that cannot run.
    const failed = (c) => c.lane && causes(stats.campaigns.find((s) => s.name === c.name && s.lane === c.lane)?.failed ?? {});
    const rows = campaigns.map((c) => [c.name, c.source ?? '', c.lane ?? '', c.mode ?? '', status(c), c.version ?? '',
      c.limits?.fuel ?? '', c.limits?.deadline_ms ?? '', c.limits?.memory_mb ?? '', c.limits?.max_concurrency ?? '', failed(c),
      h('button', { type: 'button', 'data-versions': c.name, onclick: () => select(c.name) }, 'Versions')]);
    const columns = ['campaign', 'source', 'lane', 'mode', 'status', 'version', 'fuel', 'deadline ms', 'memory MiB', 'concurrency',
      'failed since start', ''];
    list.replaceChildren(table(columns, rows, { class: 'campaigns' }));
  };

  const loadVersions = async () => {
    const name = selected;
    const history = await api(`/campaigns/${segment(name)}/versions`);
    const reload = () => Promise.all([loadList(), loadVersions()]);
    const rollback = (v) => action(line, `Roll back to ${v.version}`, async () => {
      const back = await api(`/campaigns/${segment(name)}/rollback`, { method: 'POST', body: JSON.stringify({ version: v.version }) });
      return `${name}: version ${back.version} runs again`;
    }, reload, { 'data-rollback': v.version });
    const rows = history.versions.map((v) => [v.version, v.active ? 'running' : '', v.origin, v.digest.slice(0, 12),
      `${v.size_bytes} B`, when(v.stored_at_ms), v.active ? '' : rollback(v)]);
    const file = h('input', { type: 'file', accept: '.wasm,application/wasm', name: 'component' });
    const chosen = (what) => {
      if (!file.files.length) throw new Error(`choose a .wasm component to ${what}`);
      return file.files[0];
    };
    const deployFile = async (component) => {
      const v = await api(`/campaigns/${segment(name)}/versions`, { method: 'POST', body: component, type: 'application/wasm' });
      return `${name}: version ${v.version} deployed and running`;
    };
    const deploy = action(line, 'Deploy', () => deployFile(chosen('deploy')), reload, { id: 'deploy' });
    const report = h('section', { class: 'shadow-report' });
    const shadow = action(line, 'Shadow run', async () => {
      const component = chosen('try');
      const answer = await api(`/campaigns/${segment(name)}/shadow`, { method: 'POST', body: component, type: 'application/wasm' });
      const deployThis = action(line, 'Deploy this version', () => deployFile(component), reload, { id: 'deploy-shadowed' });
      report.replaceChildren(...shadowReport(answer, deployThis));
      return `${name}: shadow run on ${answer.totals.events} kept events, ${answer.totals.differing} differ; nothing was stored or sent`;
    }, async () => {}, { id: 'shadow' });
    versions.replaceChildren(h('h3', {}, `Versions of ${name}`),
      h('p', { class: 'deploy' }, h('label', {}, 'New version ', file), shadow, ' ', deploy),
      table(['version', 'status', 'origin', 'digest', 'size', 'stored', ''], rows, { class: 'versions' }), report);
  };

  const select = async (name) => {
    selected = name;
    try {
      await loadVersions();
    } catch (error) {
      line.fail(error);
    }
  };

  loadList().catch(line.fail);
}
