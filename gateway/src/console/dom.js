// Building the page from data. Whatever the API returns (plugin names,
// reasons, bodies) may come from an attacker, so it only ever goes into the
// page as text: nothing here parses HTML.

const SVG = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, '');
    else if (value !== false && value != null) el.setAttribute(name, value);
  }
  // Strings become text nodes.
  el.append(...children.flat().filter((child) => child != null && child !== false));
  return el;
}

/** An HTML element: attributes, `on<event>` listeners, children (nodes or text). */
export const h = (tag, attrs = {}, ...children) => build(document.createElement(tag), attrs, children);

/** An SVG element, likewise. */
export const svg = (tag, attrs = {}, ...children) => build(document.createElementNS(SVG, tag), attrs, children);

/** A table with `columns` as headings and `rows` as arrays of cells. */
export function table(columns, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', {}, h('tr', {}, columns.map((column) => h('th', {}, column)))),
    h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((cell) => h('td', {}, cell))))));
}

/** A line telling how the last action or load went: `ok(text)` or `fail(error)`. */
export function statusLine() {
  const node = h('p', { class: 'status', role: 'status' });
  const show = (kind, text) => {
    node.className = `status ${kind}`;
    node.textContent = text;
  };
  return { node, ok: (text) => show('ok', text), fail: (error) => show('error', error.message) };
}

/**
 * A button that runs `run()` and reports on `line` what it answers, or the
 * API's refusal; then `done()`, which reloads what the action changed.
 */
export function action(line, label, run, done, attrs = {}) {
  const button = h('button', { type: 'button', ...attrs }, label);
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      line.ok(await run());
      await done();
    } catch (error) {
      line.fail(error);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/** A reason, a detail or a path from the API: wrapped wherever it must be. */
export const reason = (text) => h('span', { class: 'reason' }, text);

/** Failed runs by cause, as `panic 2, deadline 1`. */
export const causes = (failed) => Object.entries(failed).map(([cause, n]) => `${cause} ${n}`).join(', ') || '0';

/** Seconds as milliseconds, or a dash when unknown. */
export const ms = (seconds) => (seconds == null ? '—' : `${(seconds * 1000).toPrecision(3)} ms`);

/** A share between 0 and 1 as a percentage, or a dash when unknown. */
export const percent = (share) => (share == null ? '—' : `${(share * 100).toFixed(1)} %`);

/** A time in ms since the epoch, in the reader's zone. */
export const when = (atMs) => new Date(atMs).toLocaleString();
