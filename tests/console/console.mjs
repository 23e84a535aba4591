// Drives the admin console in Debian's headless Chromium, as an operator
// would: logs in (after a refused token), watches the lanes, deploys a
// version and rolls it back, shadow-runs a version, enables a destination,
// inspects and replays a
// dead letter, looks through the recent events, reads the advice, and saves a
// screenshot of each page. Every step waits on the
// page, never on a clock, and is checked again through the API.
//
//   node tests/console/console.mjs <admin url> <token> <screenshot dir> <component.wasm>
//
// The gateway must run `greet` (speed, sync, deadline 5000 ms, version 1
// the only one, keeping its events for shadow runs), `relay` (care) with two dead letters to destination `sink`
// (disabled by a 410 Gone), `crash` (segmentation) with one panic and its
// dead letter, and `broken`, unavailable for a missing stored component;
// greet and relay have run, and greet keeps being called. tests/e2e/console.rs
// sets that up.

import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const [admin, token, shots, wasm] = process.argv.slice(2);
if (!wasm) {
  console.error('usage: console.mjs <admin url> <token> <screenshot dir> <component.wasm>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

/** The whole run is bounded; each wait within it too. */
const WHOLE_RUN_MS = 120_000;
const WAIT_MS = 30_000;
setTimeout(() => {
  console.error(`FAIL: the run took over ${WHOLE_RUN_MS} ms`);
  process.exit(1);
}, WHOLE_RUN_MS).unref();

const step = (what) => console.log(`ok: ${what}`);

function check(condition, what) {
  if (!condition) throw new Error(what);
}

/** The API itself, to check what the console did. */
async function read(path) {
  const response = await fetch(`${admin}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  check(response.ok, `GET ${path} answered ${response.status}`);
  return response.json();
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  // No sandbox as root; no calls home, which this machine's network refuses.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage();
page.setDefaultTimeout(WAIT_MS);
await page.setViewport({ width: 1280, height: 900 });
const problems = [];
page.on('pageerror', (error) => problems.push(`script error: ${error.message}`));
page.on('requestfailed', (request) => console.log(`request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`));
page.on('console', (message) => {
  if (/Content Security Policy/i.test(message.text())) problems.push(`CSP: ${message.text()}`);
});

/** Wait until `predicate(...args)` holds in the page; a timeout says `what` was awaited. */
async function until(what, predicate, ...args) {
  try {
    await page.waitForFunction(predicate, {}, ...args);
  } catch (error) {
    throw new Error(`waited in vain for ${what}: ${error.message}`);
  }
}

/** Wait until an element matching `selector` has `text` in its text. */
const waitText = (selector, text) => until(`${selector} to say "${text}"`,
  (s, t) => [...document.querySelectorAll(s)].some((e) => e.textContent.includes(t)), selector, text);

/** The cells of the table matching `selector`, row by row. */
const cells = (selector) =>
  page.$$eval(`${selector} tbody tr`, (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)));

const shoot = async (name) => {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  step(`screenshot ${name}.png`);
};

/** Click `selector` once it is there: pages render after their answers. */
const press = async (selector) => (await page.waitForSelector(selector)).click();

const go = async (hash, ready) => {
  await press(`nav a[href="#${hash}"]`);
  await page.waitForSelector(ready);
};

async function logIn(value) {
  await page.waitForSelector('#login:not([hidden])');
  await page.type('#login input[name=token]', value);
  await press('#login button');
}

try {
  const response = await page.goto(`${admin}/console/`);
  const csp = response.headers()['content-security-policy'] ?? '';
  check(csp.includes("default-src 'self'"), `the page's Content-Security-Policy is \`${csp}\``);

  // A wrong token comes back to the form with the API's reason.
  await logIn('not-the-token');
  await waitText('#login .error', 'a valid `Authorization: Bearer <token>` header is required');
  step('a wrong token is refused with the API\'s reason');
  await shoot('login');

  await logIn(token);
  await page.waitForSelector('nav:not([hidden]) a[aria-current="page"][href="#lanes"]');
  check(await page.evaluate(() => sessionStorage.getItem('hooklane-admin-token')) !== null, 'the token is not kept for the tab');
  step('logged in; the token is kept in sessionStorage');

  // Lanes: depths and runs, live; runs/s and the charts' lines once two
  // polls are in.
  await until('runs, percentiles, a failure and a rising rate line on the lanes page', () => {
    const rows = [...document.querySelectorAll('table.lanes tbody tr')].map((r) => [...r.cells].map((c) => c.textContent));
    const lane = (name) => rows.find((r) => r[0] === name) ?? [];
    const ran = (name) => Number(lane(name)[7]) >= 1 && /^[\d.]+ ms$/.test(lane(name)[5]) && /^\d+\.\d$/.test(lane(name)[4]);
    // The first chart is runs per second: speed's line rises above zero
    // (drawn at y = 118 of 120).
    const speed = document.querySelector('figure polyline.lane-speed')?.getAttribute('points') ?? '';
    const heights = speed.split(' ').filter(Boolean).map((point) => Number(point.split(',')[1]));
    return ran('speed') && ran('care') && lane('segmentation')[8] === 'panic 1' && lane('care')[3] === '0'
      && Number(lane('speed')[4]) > 0 && heights.length >= 2 && Math.min(...heights) < 118;
  });
  const headings = await page.$$eval('table.lanes th', (th) => th.map((h) => h.textContent));
  check(headings.join() === 'lane,queued,running,backlog,runs/s,p50 run,p99 run,ok,failed,refused', `lanes: ${headings}`);
  const runs = await cells('table.campaign-runs');
  // The speed lane's two campaigns share it; the heavy one takes nearly all its fuel.
  const inSpeed = runs.filter((r) => r[1] === 'speed');
  const total = (column) => inSpeed.reduce((sum, r) => sum + parseFloat(r[column]), 0);
  const score = inSpeed.find((r) => r[0] === 'score') ?? [];
  check(inSpeed.length === 2 && Math.abs(total(6) - 100) < 0.2 && Math.abs(total(7) - 100) < 0.2 && parseFloat(score[7]) > 90,
    `speed's shares: ${JSON.stringify(runs)}`);
  const captions = await page.$$eval('figcaption', (all) => all.map((c) => c.textContent));
  check(/^Runs per second since /.test(captions[0]) && /^Backlog since /.test(captions[1]), `charts: ${captions}`);
  step('lanes show runs, percentiles, shares and a chart');
  await shoot('lanes');

  // Campaigns: lane, mode, limits, status; a refused upload shows the
  // API's error; a good one deploys.
  await go('campaigns', 'table.campaigns');
  const campaigns = await cells('table.campaigns');
  const row = (name) => campaigns.find((r) => r[0] === name) ?? [];
  check(row('greet').slice(1, 8).join() === 'site,speed,sync,running,1,100000000,5000', `greet: ${row('greet')}`);
  check(/^unavailable: .*missing/.test(row('broken')[4]), `broken: ${row('broken')}`);
  check(/^throttled: its runs average \d+ fuel, above its lane's guard_fuel of 1000000/.test(row('score')[4]), `score: ${row('score')}`);
  check(row('crash')[10] === 'panic 1' && row('greet')[10] === '0', `failures: ${row('crash')} / ${row('greet')}`);
  step('campaigns show lane, mode, limits, failures by cause, why one is unavailable and why one is throttled');
  await press('button[data-versions="greet"]');
  await page.waitForSelector('table.versions');
  const upload = await page.$('input[name=component]');
  await upload.uploadFile(fileURLToPath(new URL('package.json', import.meta.url)));
  await press('#deploy');
  await waitText('.status.error', 'invalid_plugin: campaign `greet`: the upload is not a valid');
  step('a refused deploy shows the API\'s error');

  // Chromium reads no file through a path with `..` in it.
  await (await page.$('input[name=component]')).uploadFile(resolve(wasm));
  await press('#deploy');
  await waitText('.status.ok', 'greet: version 2 deployed and running');
  check((await read('/v1/campaigns/greet/versions')).active === 2, 'the deploy did not make version 2 run');
  step('deployed version 2 through the page');

  await press('button[data-rollback="1"]');
  await waitText('.status.ok', 'greet: version 1 runs again');
  check((await read('/v1/campaigns/greet/versions')).active === 1, 'the rollback did not make version 1 run');
  // The table is loaded again after the answer.
  await until('version 1 shown running', () => [...document.querySelectorAll('table.versions tbody tr')]
    .some((r) => r.cells[0].textContent === '1' && r.cells[1].textContent === 'running'));
  step('rolled back to version 1 through the page');
  await shoot('campaigns');

  // Shadow run: the same component tried on greet's kept events next to
  // version 1 — every answer differs (a number, not `ok`) — and nothing is
  // stored: version 1 still runs, and there is no third version.
  await (await page.$('input[name=component]')).uploadFile(resolve(wasm));
  await press('#shadow');
  await waitText('.status.ok', 'greet: shadow run on ');
  await until('the comparison table', () => {
    const rows = [...document.querySelectorAll('table.shadow tbody tr')];
    return rows.length > 0 && rows.every((r) => r.cells[2].textContent === 'reply'
      && r.cells[3].textContent.startsWith('ok; reply 200 "ok"') && /^ok; reply 200 "\d+"/.test(r.cells[4].textContent));
  });
  await waitText('p.shadow-totals', 'kept events run by both');
  await page.waitForSelector('#deploy-shadowed');
  const afterShadow = await read('/v1/campaigns/greet/versions');
  check(afterShadow.active === 1 && afterShadow.versions.length === 2, `the shadow run changed the versions: ${JSON.stringify(afterShadow)}`);
  step('a shadow run of the upload shows its difference per event; nothing was deployed');
  await shoot('shadow');

  // Destinations: the sink that answered 410 Gone is disabled; enable it.
  await go('destinations', 'table.destinations');
  const sink = (await cells('table.destinations'))[0];
  check(sink.slice(2, 4).join() === 'closed,disabled (410 Gone)', `sink: ${sink}`);
  await press('button[data-enable="sink"]');
  await waitText('.status.ok', 'sink enabled');
  await until('no Enable button left', () => !document.querySelector('button[data-enable]'));
  check((await read('/v1/destinations')).destinations.every((d) => !d.disabled), 'the sink is still disabled');
  step('enabled the sink through the page');
  await shoot('destinations');

  // Dead letters: filter, inspect (the body stays text), replay one, then
  // all that match the filter.
  await go('dead-letters', 'table.dead-letters');
  await page.waitForSelector('select[name=campaign] option[value="relay"]');
  await page.select('select[name=campaign]', 'relay');
  const deadRows = (count) => until(`${count} dead letters of relay listed`, (n) => {
    const rows = [...document.querySelectorAll('table.dead-letters tbody tr')];
    return rows.length === n && rows.every((r) => r.cells[2].textContent === 'relay');
  }, count);
  await deadRows(2);
  const [dead] = (await read('/v1/dead-letters?campaign=relay')).dead_letters;
  await press(`button[data-inspect="${dead.id}"]`);
  await waitText('pre.body', '"note":"<b id=\\"xss\\">bold</b>"');
  await waitText('table.attempts', 'http_410');
  check(await page.$('#xss') === null, 'a dead letter\'s body was put into the page as HTML');
  step('inspected a dead letter: attempts and body, as text');
  await shoot('dead-letters');

  await press(`button[data-replay="${dead.id}"]`);
  await waitText('.status.ok', `Dead letter ${dead.id} replayed`);
  await deadRows(1);
  step('replayed one dead letter through the page');
  await press('#replay-all');
  await waitText('.status.ok', 'Replayed 1');
  await waitText('#dead-letters .empty', 'No dead letters.');
  const left = (await read('/v1/dead-letters')).dead_letters;
  check(left.length === 1 && left[0].campaign === 'crash', `dead letters left: ${JSON.stringify(left)}`);
  step('replayed all that match the filter, and only those');

  // Events: the recent runs, filtered; one event's actions and tries.
  await go('events', 'table.events');
  await page.waitForSelector('#events select[name=campaign] option[value="crash"]');
  await page.select('#events select[name=campaign]', 'crash');
  await page.select('#events select[name=ended]', 'dead');
  await until('crash\'s dead run listed', () => {
    const rows = [...document.querySelectorAll('table.events tbody tr')];
    return rows.length === 1 && rows[0].cells[1].textContent === 'crash' && rows[0].cells[4].textContent === 'dead';
  });
  const [crashed] = (await read('/v1/events?campaign=crash&ended=dead')).runs;
  await press(`button[data-inspect="${crashed.event_id}"]`);
  await waitText('article.run h4', 'crash (async, v1): dead');
  await waitText('article.run .error', `${crashed.cause}: `);
  step('filtered the events to crash\'s dead run and read its cause');
  await page.select('#events select[name=campaign]', 'relay');
  await page.select('#events select[name=ended]', 'ok');
  await until('relay\'s runs listed', () => {
    const rows = [...document.querySelectorAll('table.events tbody tr')];
    return rows.length > 0 && rows.every((r) => r.cells[1].textContent === 'relay' && r.cells[4].textContent === 'ok');
  });
  const [relayed] = (await read('/v1/events?campaign=relay&ended=ok')).runs;
  await press(`button[data-inspect="${relayed.event_id}"]`);
  await waitText('article.run table.planned', 'to sink');
  step('inspected a relayed event: its delivery to the sink');
  await shoot('events');

  // Advice: a verdict and its reasons per running campaign; crash ran once,
  // greet as often as it was called.
  await go('advice', 'table.advice');
  const advice = await cells('table.advice');
  const advised = (name) => advice.find((r) => r[0] === name) ?? [];
  check(advised('crash').slice(1, 7).join() === 'segmentation,async,1,not enough runs,,not enough runs yet: 1 of 50',
    `crash's advice: ${advised('crash')}`);
  check(/^(not enough runs yet: \d+ of 50|p99 run [\d.]+ ms of a 5000 ms speed deadline: fits)/.test(advised('greet')[6] ?? ''),
    `greet's advice: ${advised('greet')}`);
  check(!advised('broken').length, 'an unavailable campaign got advice');
  check((await read('/v1/advice')).min_runs === 50, 'the page and the API disagree on min_runs');
  step('advice shows each campaign\'s verdict with its figures');
  await shoot('advice');

  await press('#logout');
  await page.waitForSelector('#login:not([hidden])');
  check(await page.evaluate(() => sessionStorage.getItem('hooklane-admin-token')) === null, 'the token outlived the logout');
  step('logged out; the token is forgotten');

  check(problems.length === 0, problems.join('\n'));
  console.log('console: all steps passed');
} catch (error) {
  await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  const said = await page.$$eval('.status', (lines) => lines.filter((l) => l.offsetParent).map((l) => l.textContent)).catch(() => []);
  console.error(`FAIL: ${error.stack ?? error}\nthe page says: ${JSON.stringify(said)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
