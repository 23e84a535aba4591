// A shadow run's report, as text: totals, then one row per kept event with
// what differs and what each version asked for. Nothing of it was carried
// out; bodies are shown by their start (the API compares their digests).

import { h, table } from './dom.js';

const LINE = 60;
const short = (text) => (text.length > LINE ? `${text.slice(0, LINE)}…` : text);
const body = (b) => (b.text == null ? `(${b.bytes} B, sha256 ${b.sha256.slice(0, 12)})` : JSON.stringify(short(b.text)));
const ratio = (r) => (r == null ? '—' : `×${r.toFixed(2)}`);

/** One version's run of an event on one line: outcome, then each action. */
function side(run) {
  const parts = [run.detail ? `${run.outcome} (${run.detail})` : run.outcome];
  if (run.reply) parts.push(`reply ${run.reply.status} ${body(run.reply.body)}`);
  for (const d of run.deliveries) parts.push(`deliver to ${d.destination} ${body(d.body)}`);
  for (const e of run.emits) parts.push(`emit to ${e.campaigns.join(', ')} ${body(e.body)}`);
  for (const kv of run.kv) parts.push(`kv ${kv.op} ${kv.key}`);
  return parts.join('; ');
}

/** The report's nodes; `deploy`, if given, is a button that deploys the upload. */
export function shadowReport(report, deploy) {
  const t = report.totals;
  const running = report.running;
  const totals = [
    `${t.events} kept events run by both, ${t.differing} differ; failed: ${t.failed_running} with ${running}, ${t.failed_candidate} with the upload.`,
    `Fuel ${t.fuel_running} with ${running}, ${t.fuel_candidate} with the upload (${ratio(t.fuel_ratio)});`,
    `run time ${t.run_ms_running.toFixed(2)} ms with ${running}, ${t.run_ms_candidate.toFixed(2)} ms with the upload (${ratio(t.time_ratio)}).`,
    t.not_run ? `${t.not_run} kept events not run: out of time.` : '',
    t.not_kept ? `${t.not_kept} events not kept: bodies that are not JSON cannot be redacted.` : '',
  ].filter(Boolean).join(' ');
  const rows = report.events.map((e) => [e.event_id, e.source, e.differs ? e.differences.join(', ') : 'the same',
    side(e.running), side(e.candidate), `${e.running.fuel} / ${e.candidate.fuel}`,
    `${e.running.run_ms.toFixed(2)} / ${e.candidate.run_ms.toFixed(2)}`]);
  return [
    h('h3', {}, `Shadow run of ${report.campaign}: the upload (${report.candidate_digest.slice(0, 12)}) against ${running}`),
    h('p', { class: 'shadow-totals' }, totals),
    h('p', { class: 'note' }, 'Nothing either version asked for was carried out: no KV write, delivery or emit.'),
    table(['event', 'source', 'differs in', running, 'upload', 'fuel', 'ms'], rows, { class: 'shadow' }),
    deploy ? h('p', {}, deploy) : null,
  ];
}
