// End-to-end scenarios of keel's admin console (/admin/) in headless Chromium, driven by
// playwright-core against a running keel. tests/console_browser.rs starts keel (on SQLite,
// then on PostgreSQL) and runs this script; it can also be run by hand:
//
//   KEEL_URL=http://127.0.0.1:3000 KEEL_ADMIN_EMAIL=... KEEL_ADMIN_PASSWORD=... \
//   KEEL_SMTP_PORT=2525 node console.mjs
//
// Environment:
//   KEEL_URL             keel's address (required)
//   KEEL_ADMIN_EMAIL     an admin's e-mail address (required)
//   KEEL_ADMIN_PASSWORD  that admin's password (required)
//   KEEL_SMTP_PORT       the port of keel's SMTP_URL, where nothing listens until the
//                        welcome-job scenario starts a sink there (required)
//   KEEL_DB_LABEL        names the screenshots and the axe summary (default "db")
//   KEEL_OUTPUT_DIR      where they go (default <workspace>/target/console-screenshots)
//   KEEL_CHROMIUM        the browser (default /usr/bin/chromium)
//   KEEL_SCENARIOS       comma-separated scenario numbers to run (default all)
//
// Every scenario runs even when an earlier one failed; the script prints one line per
// step, a summary, and exits 1 when anything failed. Keel needs: jobs with one attempt
// (KEEL_JOBS_MAX_ATTEMPTS=1, so a failing e-mail or delivery fails at once), webhooks
// allowed to reach loopback (the development default), and no login rate limits.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { startSmtpSink, startWebhookReceiver } from './servers.mjs';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------------------------------
// Settings

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`console.mjs: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const BASE = required('KEEL_URL').replace(/\/$/, '');
const ADMIN_EMAIL = required('KEEL_ADMIN_EMAIL');
const ADMIN_PASSWORD = required('KEEL_ADMIN_PASSWORD');
const SMTP_PORT = Number(required('KEEL_SMTP_PORT'));
const DB = process.env.KEEL_DB_LABEL || 'db';
const OUT = path.resolve(process.env.KEEL_OUTPUT_DIR || path.join(here, '../../../../target/console-screenshots'));
const CHROMIUM = process.env.KEEL_CHROMIUM || '/usr/bin/chromium';
const ONLY = process.env.KEEL_SCENARIOS ? new Set(process.env.KEEL_SCENARIOS.split(',').map((s) => s.trim())) : null;
const AXE_SOURCE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/// How long a missing element is waited for before the step fails.
const ELEMENT_MS = 5000;
/// How long something the server does in the background (a job, a delivery, an event) may take.
const BACKGROUND_MS = 20000;
/// Every account the script makes gets this password.
const PASSWORD = 'correct horse battery staple';
/// The pages axe checks and screenshots are taken of (scenarios 9 and 10).
const AUDITED = ['login', 'overview', 'users', 'user-detail', 'user-new', 'jobs', 'job-detail',
  'webhooks', 'webhook-new', 'webhook-detail', 'delivery-detail', 'audit', 'events', 'settings'];
const VIEWPORTS = [{ width: 375, height: 800 }, { width: 1440, height: 900 }];
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;
const RUN = Date.now().toString(36);

fs.mkdirSync(OUT, { recursive: true });
for (const file of fs.readdirSync(OUT)) {
  // A failure's screenshot from an earlier run would mislead.
  if (file.startsWith('FAILED-') && file.endsWith(`-${DB}.png`)) fs.rmSync(path.join(OUT, file));
}

// The Rust test gives up after a while too; this says why.
setTimeout(() => {
  console.log('console.mjs: still running after 6 minutes; giving up');
  process.exit(1);
}, 6 * 60 * 1000).unref();

// ---------------------------------------------------------------------------------------
// Reporting

const results = [];
const browserProblems = [];
const axeResults = {};
let currentPage = null;

function log(line) {
  console.log(line);
}

/// Runs scenario `number` unless KEEL_SCENARIOS leaves it out; a failure is recorded and
/// the next scenario runs.
async function scenario(number, title, fn) {
  if (ONLY && !ONLY.has(String(number))) return;
  log(`\n--- ${number}. ${title}`);
  currentPage = null;
  const started = Date.now();
  try {
    await fn();
    results.push({ number, title, ok: true });
    log(`ok ${number}. ${title} (${Date.now() - started} ms)`);
  } catch (error) {
    results.push({ number, title, ok: false, message: error.message });
    log(`FAIL ${number}. ${title}: ${error.message}`);
    if (currentPage && !currentPage.isClosed()) {
      const file = path.join(OUT, `FAILED-${number}-${DB}.png`);
      await currentPage.screenshot({ path: file, fullPage: true }).catch(() => {});
      log(`     page at failure: ${currentPage.url()} (screenshot ${file})`);
    }
  }
}

/// Runs one step; its failure names the step and where the browser was.
async function step(what, fn) {
  try {
    const value = await fn();
    log(`  ✓ ${what}`);
    return value;
  } catch (error) {
    const where = currentPage && !currentPage.isClosed() ? await describePage(currentPage) : '';
    throw new Error(`${what}: ${shorten(error.message)}${where ? `\n     ${where}` : ''}`);
  }
}

function shorten(message) {
  // Playwright's messages end with a long call log; its first lines say what happened.
  const lines = String(message).split('\n').filter((l) => l.trim() && !/^=+/.test(l.trim()));
  return lines.slice(0, 4).join(' | ');
}

async function describePage(page) {
  try {
    const h1 = await page.locator('h1').first().textContent({ timeout: 500 }).catch(() => null);
    const alert = await page.locator('[role=alert]').first().textContent({ timeout: 200 }).catch(() => null);
    return `(browser at ${page.url()}${h1 ? `, h1 "${h1.trim()}"` : ''}${alert ? `, alert "${alert.trim().replace(/\s+/g, ' ')}"` : ''})`;
  } catch {
    return `(browser at ${page.url()})`;
  }
}

function fail(message) {
  throw new Error(message);
}

/// Waits until `locator` is visible; fails with "not found" and the selector otherwise.
async function expectVisible(locator, what, timeout = ELEMENT_MS) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout });
  } catch {
    fail(`selector not found: ${what} [${locator}] within ${timeout} ms`);
  }
  return locator.first();
}

/// Polls `probe` until it returns something truthy.
async function eventually(what, probe, timeout = BACKGROUND_MS, every = 500) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (error) {
      last = error.message;
    }
    if (Date.now() > deadline) fail(`${what}: not within ${timeout} ms${last ? ` (last: ${shorten(last)})` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

function pathOf(page) {
  return new URL(page.url()).pathname;
}

function expectPath(page, expected) {
  const actual = pathOf(page);
  const ok = expected instanceof RegExp ? expected.test(actual) : actual === expected;
  if (!ok) fail(`expected to be on ${expected}, but the browser is on ${page.url()}`);
}

// ---------------------------------------------------------------------------------------
// Browser

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
log(`Chromium ${browser.version()} against ${BASE} (${DB}); output in ${OUT}`);

const contexts = [];

/// A fresh browser profile (its own cookies: its own console session).
async function newContext(label) {
  const context = await browser.newContext({ baseURL: BASE, viewport: VIEWPORTS[1] });
  context.setDefaultTimeout(ELEMENT_MS);
  context.setDefaultNavigationTimeout(15000);
  context.on('page', (page) => watch(page, label));
  contexts.push(context);
  return context;
}

/// Records console errors, CSP violations and uncaught exceptions of `page`; accepts
/// confirmation dialogs.
function watch(page, label) {
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const text = message.text();
    const source = message.location()?.url || '';
    // A form answered 4xx (a wrong password, a conflict) makes Chromium log the document's
    // status; that is the scenario, not a fault.
    const documentStatus = /^Failed to load resource: the server responded with a status of 4\d\d/.test(text)
      && source.split('?')[0] === page.url().split('?')[0];
    if (documentStatus) return;
    browserProblems.push({ kind: /Content.Security.Policy/i.test(text) ? 'CSP violation' : 'console error', text, page: page.url(), source, context: label });
  });
  page.on('pageerror', (error) => {
    browserProblems.push({ kind: 'uncaught exception', text: error.message, page: page.url(), context: label });
  });
  page.on('dialog', (dialog) => dialog.accept().catch(() => {}));
}

async function newPage(context) {
  const page = await context.newPage();
  currentPage = page;
  return page;
}

/// Opens `target` (a path) and fails on a 5xx answer.
async function visit(page, target) {
  currentPage = page;
  const response = await page.goto(target, { waitUntil: 'load' });
  const status = response?.status();
  if (status === 404) fail(`GET ${target} answered 404 (no such console page)`);
  if (status && status >= 500) fail(`GET ${target} answered ${status}`);
  return response;
}

// ---------------------------------------------------------------------------------------
// Accessibility and screenshots

/// Runs axe on `page` at both widths and screenshots it; `name` is one of AUDITED.
async function audit(page, name) {
  if (axeResults[name]) return;
  const entry = { url: page.url(), violations: [] };
  axeResults[name] = entry;
  const original = page.viewportSize();
  try {
    for (const viewport of VIEWPORTS) {
      await page.setViewportSize(viewport);
      // page.evaluate runs through the DevTools protocol, which the page's CSP does not
      // govern (addScriptTag would be an inline script, which it forbids).
      if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) await page.evaluate(AXE_SOURCE);
      const violations = await page.evaluate(async () => {
        const result = await window.axe.run(document, { resultTypes: ['violations'] });
        return result.violations.map((v) => ({
          id: v.id,
          impact: v.impact,
          help: v.help,
          helpUrl: v.helpUrl,
          nodes: v.nodes.map((n) => ({ target: n.target.join(' '), summary: n.failureSummary })),
        }));
      });
      for (const violation of violations) {
        const same = entry.violations.find((v) => v.id === violation.id);
        if (same) {
          for (const node of violation.nodes) {
            if (!same.nodes.some((n) => n.target === node.target)) same.nodes.push(node);
          }
          same.widths.push(viewport.width);
        } else {
          entry.violations.push({ ...violation, widths: [viewport.width] });
        }
      }
      const file = path.join(OUT, `${name}-${viewport.width}-${DB}.png`);
      await page.screenshot({ path: file, fullPage: true });
    }
  } catch (error) {
    entry.error = error.message;
    log(`  ! axe or screenshot failed on ${name}: ${shorten(error.message)}`);
  } finally {
    if (original) await page.setViewportSize(original).catch(() => {});
  }
  const serious = entry.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  log(`  · axe ${name}: ${entry.violations.length} violation(s), ${serious.length} serious or critical`);
}

// ---------------------------------------------------------------------------------------
// The JSON API (for set-up and for checking what the console stored)

async function api(method, route, { token, body } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${BASE}${route}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  return { status: response.status, json, text };
}

async function adminToken() {
  const response = await api('POST', '/auth/login', { body: { email: ADMIN_EMAIL, password: ADMIN_PASSWORD } });
  if (response.status !== 200) fail(`POST /auth/login as the admin answered ${response.status}: ${response.text}`);
  return response.json.access_token;
}

async function register(email, name) {
  const response = await api('POST', '/auth/register', { body: { email, name, password: PASSWORD } });
  if (response.status !== 201) fail(`POST /auth/register answered ${response.status}: ${response.text}`);
  return response.json.user;
}

// ---------------------------------------------------------------------------------------
// Console helpers

/// Fills the sign-in form on the current page and submits it.
async function submitSignIn(page, email, password) {
  await (await expectVisible(page.locator('input[name=email]'), 'the e-mail input')).fill(email);
  await (await expectVisible(page.locator('input[name=password]'), 'the password input')).fill(password);
  const button = await expectVisible(page.getByRole('button', { name: 'Sign in' }), 'the "Sign in" button');
  await Promise.all([page.waitForLoadState('load'), button.click()]);
  await page.waitForLoadState('load');
}

/// A context signed in as the admin, with the page it landed on.
async function signedIn(label) {
  const context = await newContext(label);
  const page = await newPage(context);
  await visit(page, '/admin/login');
  await submitSignIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
  if (pathOf(page) === '/admin/login') fail(`signing in as ${ADMIN_EMAIL} stayed on /admin/login ${await describePage(page)}`);
  return { context, page };
}

/// Submits the form of `page` with the button named `name` and waits for the next page.
async function press(page, name) {
  const button = await expectVisible(page.getByRole('button', { name, exact: true }), `the "${name}" button`);
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }).catch(() => {}), button.click()]);
  await page.waitForLoadState('load');
}

/// Creates a user on /admin/users/new; returns its id (from the page it lands on).
async function createUserInConsole(page, email, name, role = 'user') {
  await visit(page, '/admin/users/new');
  await audit(page, 'user-new');
  await (await expectVisible(page.locator('input[name=email]'), 'input[name=email]')).fill(email);
  await (await expectVisible(page.locator('input[name=name]'), 'input[name=name]')).fill(name);
  const select = await expectVisible(page.locator('select[name=role]'), 'select[name=role]');
  try {
    await select.selectOption(role, { timeout: 1000 });
  } catch {
    await select.selectOption({ label: role[0].toUpperCase() + role.slice(1) }, { timeout: 1000 });
  }
  await press(page, 'Create user');
  const match = /^\/admin\/users\/([0-9a-f-]{36})$/.exec(pathOf(page));
  if (!match) fail(`"Create user" did not land on /admin/users/{id} ${await describePage(page)}`);
  return match[1];
}

/// The visible text of `page`'s main content (or body).
async function mainText(page) {
  const main = page.locator('main');
  if (await main.count()) return (await main.first().innerText()).replace(/\s+/g, ' ');
  return (await page.locator('body').innerText()).replace(/\s+/g, ' ');
}

// ---------------------------------------------------------------------------------------
// Scenarios

let admin = null; // { context, page } signed in as the admin
let createdUserId = null;

await scenario(11, 'keyboard: Tab reaches e-mail, password and "Sign in", each with a visible focus indicator', async () => {
  const context = await newContext('keyboard');
  const page = await newPage(context);
  await step('GET /admin/login', () => visit(page, '/admin/login'));
  await audit(page, 'login');
  const focused = () => page.evaluate(() => {
    const el = document.activeElement;
    if (!el || el === document.body) return null;
    const style = getComputedStyle(el);
    return {
      tag: el.tagName.toLowerCase(),
      name: el.getAttribute('name'),
      type: el.getAttribute('type'),
      text: (el.textContent || '').trim(),
      outlineStyle: style.outlineStyle,
      outlineWidth: style.outlineWidth,
      boxShadow: style.boxShadow,
    };
  });
  const indicator = (f) => (f.outlineStyle !== 'none' && parseFloat(f.outlineWidth) > 0) || (f.boxShadow && f.boxShadow !== 'none');
  const describe = (f) => (f ? `<${f.tag}${f.name ? ` name=${f.name}` : ''}>${f.text ? ` "${f.text}"` : ''}` : 'nothing');
  await step('Tab reaches the e-mail field (after the links before it)', async () => {
    const seen = [];
    for (let i = 0; i < 15; i++) {
      await page.keyboard.press('Tab');
      const f = await focused();
      seen.push(describe(f));
      if (f?.name === 'email') {
        if (!indicator(f)) fail(`the e-mail field has no visible focus indicator (outline ${f.outlineStyle} ${f.outlineWidth}, box-shadow ${f.boxShadow})`);
        return;
      }
    }
    fail(`15 Tabs never focused input[name=email]; focus went: ${seen.join(' → ')}`);
  });
  await step('the next Tab reaches the password field', async () => {
    await page.keyboard.press('Tab');
    const f = await focused();
    if (f?.name !== 'password') fail(`focus is on ${describe(f)}, not input[name=password]`);
    if (!indicator(f)) fail(`the password field has no visible focus indicator (outline ${f.outlineStyle} ${f.outlineWidth}, box-shadow ${f.boxShadow})`);
  });
  await step('the next Tab reaches the "Sign in" button', async () => {
    await page.keyboard.press('Tab');
    const f = await focused();
    if (f?.tag !== 'button' || !/sign in/i.test(f.text)) fail(`focus is on ${describe(f)}, not the "Sign in" button`);
    if (!indicator(f)) fail(`the button has no visible focus indicator (outline ${f.outlineStyle} ${f.outlineWidth}, box-shadow ${f.boxShadow})`);
  });
  await context.close();
});

await scenario(2, 'sign in: a wrong password shows an alert and stays on /admin/login; the right one signs in', async () => {
  const context = await newContext('admin');
  const page = await newPage(context);
  await step('GET /admin/login shows the sign-in form', async () => {
    await visit(page, '/admin/login');
    await audit(page, 'login');
  });
  await step('a wrong password shows role=alert and stays on /admin/login', async () => {
    await submitSignIn(page, ADMIN_EMAIL, 'not the password at all');
    expectPath(page, '/admin/login');
    await expectVisible(page.getByRole('alert'), 'role=alert after a wrong password');
  });
  await step('the right password leaves /admin/login', async () => {
    await submitSignIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    if (pathOf(page) === '/admin/login') fail('still on /admin/login after the right password');
    if (!pathOf(page).startsWith('/admin')) fail(`landed outside the console: ${page.url()}`);
  });
  await step('GET /admin/ shows the overview', async () => {
    await visit(page, '/admin/');
    expectPath(page, '/admin/');
    await audit(page, 'overview');
  });
  admin = { context, page };
});

await scenario(1, 'a signed-out browser is sent to sign in and comes back to the page it asked for', async () => {
  const context = await newContext('deep-link');
  const page = await newPage(context);
  await step('GET /admin/users redirects to /admin/login?next=/admin/users', async () => {
    await visit(page, '/admin/users');
    expectPath(page, '/admin/login');
    const next = new URL(page.url()).searchParams.get('next');
    if (next !== '/admin/users') fail(`the login page's next is ${JSON.stringify(next)} (${page.url()})`);
  });
  await step('after signing in the browser is on /admin/users', async () => {
    await submitSignIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    expectPath(page, '/admin/users');
  });
  await audit(page, 'users');
  await context.close();
});

if (!admin) {
  // Scenario 2 failed or was left out; the rest still need a signed-in admin.
  try {
    admin = await signedIn('admin');
  } catch (error) {
    log(`cannot sign in as the admin: ${error.message}`);
  }
}

await scenario(3, 'create a user; the live events page shows the next user.created', async () => {
  if (!admin) fail('no signed-in admin');
  const { context, page } = admin;
  const email = `created-${RUN}@example.com`;
  createdUserId = await step('"Create user" on /admin/users/new lands on /admin/users/{id}', () => createUserInConsole(page, email, 'Created In Console', 'user'));
  await step('the user page shows the new user', async () => {
    const text = await mainText(page);
    if (!text.includes(email)) fail(`the page does not show ${email}`);
    await audit(page, 'user-detail');
  });
  await step('GET /admin/users lists the new user', async () => {
    await visit(page, '/admin/users');
    await audit(page, 'users');
    const text = await mainText(page);
    if (!text.includes(email)) fail(`the list does not show ${email}`);
  });
  const events = await newPage(context);
  const entries = events.locator('#events li', { hasText: 'user.created' });
  let before = 0;
  await step('GET /admin/events shows the live list', async () => {
    await visit(events, '/admin/events');
    await events.locator('#events').waitFor({ state: 'attached', timeout: ELEMENT_MS }).catch(() => fail('selector not found: #events'));
    // Let the stream connect before the event it must carry happens: the page may say so
    // (not part of the contract), or a moment passes.
    const connected = await events.getByText(/^connected/i).first().waitFor({ timeout: 3000 }).then(() => true, () => false);
    await events.waitForTimeout(connected ? 300 : 1500);
    before = await entries.count();
  });
  const second = `live-${RUN}@example.com`;
  await step('creating another user', () => createUserInConsole(page, second, 'Seen Live', 'user'));
  await step('its user.created appears in #events within 10 s', async () => {
    currentPage = events;
    await eventually('a new "#events li" containing user.created', async () => (await entries.count()) > before, 10000, 250);
    await audit(events, 'events');
  });
  await events.close();
  currentPage = page;
});

await scenario(4, 'concurrent edit: the second save of a stale version is refused as a conflict', async () => {
  if (!admin) fail('no signed-in admin');
  const token = await adminToken();
  let id = createdUserId;
  if (!id) {
    const response = await api('POST', '/users', { token, body: { email: `edit-${RUN}@example.com`, name: 'Edited Twice' } });
    if (response.status !== 201) fail(`POST /users answered ${response.status}`);
    id = response.json.id;
    log(`  (scenario 3 made no user; editing ${id}, made through the API)`);
  }
  const a = await newPage(admin.context);
  const other = await step('a second browser signs in (a second session)', () => signedIn('editor-b'));
  const b = other.page;
  await step('both open /admin/users/{id}', async () => {
    await visit(a, `/admin/users/${id}`);
    await visit(b, `/admin/users/${id}`);
    await expectVisible(a.locator('input[name=name]'), 'input[name=name] on page A');
    await expectVisible(b.locator('input[name=name]'), 'input[name=name] on page B');
  });
  const nameA = `Saved By A ${RUN}`;
  await step('page A saves a new name and shows a success message', async () => {
    currentPage = a;
    await a.locator('input[name=name]').fill(nameA);
    await press(a, 'Save');
    const alert = a.getByRole('alert');
    if (await alert.count() && await alert.first().isVisible()) fail(`page A shows an alert: "${(await alert.first().innerText()).trim()}"`);
    const status = a.locator('[role=status]');
    await expectVisible(status, 'a role=status success message on page A');
    if (!(await a.locator('input[name=name]').inputValue()).includes(nameA) && !(await mainText(a)).includes(nameA)) {
      fail('page A does not show the name it saved');
    }
  });
  await step('page B (still on the old version) saves another name and is told it changed', async () => {
    currentPage = b;
    await b.locator('input[name=name]').fill(`Saved By B ${RUN}`);
    await press(b, 'Save');
    const alert = await expectVisible(b.getByRole('alert'), 'role=alert on page B');
    const text = (await alert.innerText()).trim();
    if (!/changed/i.test(text)) fail(`page B's alert does not say "changed": "${text}"`);
  });
  await step('the stored name is the one page A saved (GET /users/{id})', async () => {
    const response = await api('GET', `/users/${id}`, { token });
    if (response.status !== 200) fail(`GET /users/${id} answered ${response.status}`);
    if (response.json.name !== nameA) fail(`the stored name is ${JSON.stringify(response.json.name)}, not ${JSON.stringify(nameA)}`);
  });
  await a.close();
  await other.context.close();
  currentPage = admin.page;
});

await scenario(5, 'a welcome e-mail that died while SMTP was down is retried from the console and sent', async () => {
  if (!admin) fail('no signed-in admin');
  const { page } = admin;
  const rows = page.locator('tr[data-job-id]', { hasText: 'email.welcome' });
  const deadWelcome = async () => {
    await visit(page, '/admin/jobs?state=dead');
    const ids = [];
    for (const row of await rows.all()) ids.push(await row.getAttribute('data-job-id'));
    return ids;
  };
  const known = new Set(await step('GET /admin/jobs?state=dead', deadWelcome));
  const email = `welcome-${RUN}@example.com`;
  await step(`POST /auth/register ${email} (SMTP is down)`, () => register(email, 'Welcome Me'));
  const jobId = await step('/admin/jobs?state=dead lists its dead email.welcome job', () => eventually(
    'a new tr[data-job-id] with email.welcome on /admin/jobs?state=dead',
    async () => (await deadWelcome()).find((id) => !known.has(id)),
  ));
  await audit(page, 'jobs');
  const sink = await step(`an SMTP sink listens on port ${SMTP_PORT}`, () => startSmtpSink(SMTP_PORT));
  try {
    await step('GET /admin/jobs/{id} and "Retry"', async () => {
      await visit(page, `/admin/jobs/${jobId}`);
      if (!(await mainText(page)).includes('email.welcome')) fail('the job page does not show its kind, email.welcome');
      await audit(page, 'job-detail');
      await press(page, 'Retry');
      const alert = page.getByRole('alert');
      if (await alert.count() && await alert.first().isVisible()) fail(`"Retry" shows an alert: "${(await alert.first().innerText()).trim()}"`);
    });
    await step(`the sink receives a message to ${email}`, async () => {
      const message = await sink.waitFor(email, BACKGROUND_MS);
      if (!message) {
        const token = await adminToken();
        const job = await api('GET', `/jobs/${jobId}`, { token });
        fail(`no message to ${email} within ${BACKGROUND_MS} ms (the sink got ${sink.messages.length}; GET /jobs/${jobId}: ${job.status} state ${job.json?.state}, last_error ${JSON.stringify(job.json?.last_error)})`);
      }
    });
    await step('the job page shows the state succeeded', () => eventually('"succeeded" on /admin/jobs/{id}', async () => {
      await visit(page, `/admin/jobs/${jobId}`);
      return /\bsucceeded\b/i.test(await mainText(page));
    }, 10000));
  } finally {
    await sink.close();
  }
});

await scenario(6, 'webhooks: create one in the console, see a failed delivery, replay it', async () => {
  if (!admin) fail('no signed-in admin');
  const { page } = admin;
  const receiver = await startWebhookReceiver();
  let webhookId = null;
  try {
    const hookUrl = `${receiver.url}/hook-${RUN}`;
    await step('"Create webhook" on /admin/webhooks/new shows the signing secret once', async () => {
      await visit(page, '/admin/webhooks/new');
      await audit(page, 'webhook-new');
      await (await expectVisible(page.locator('input[name=url]'), 'input[name=url]')).fill(hookUrl);
      await (await expectVisible(page.locator('input[name=event_types]'), 'input[name=event_types]')).fill('user.*');
      await press(page, 'Create webhook');
      const alert = page.getByRole('alert');
      if (await alert.count() && await alert.first().isVisible()) fail(`the form shows an alert: "${(await alert.first().innerText()).trim()}"`);
      // The secret may be text or the value of a (read-only) input.
      const values = await page.locator('main input, main textarea').evaluateAll((els) => els.map((el) => el.value));
      const text = [await mainText(page), ...values].join(' ');
      if (!/whsec_[A-Za-z0-9+/=_-]{20,}/.test(text)) fail('no whsec_… secret on the page after "Create webhook"');
      webhookId = /^\/admin\/webhooks\/([0-9a-f-]{36})$/.exec(pathOf(page))?.[1] ?? null;
      if (!webhookId) {
        // A page of its own for the secret: a link leads on to the webhook.
        for (const href of await page.locator('main a[href^="/admin/webhooks/"]').evaluateAll((els) => els.map((el) => el.getAttribute('href')))) {
          webhookId ??= /^\/admin\/webhooks\/([0-9a-f-]{36})$/.exec(href)?.[1] ?? null;
        }
      }
    });
    await step('GET /admin/webhooks lists it', async () => {
      await visit(page, '/admin/webhooks');
      await audit(page, 'webhooks');
      if (!(await mainText(page)).includes(hookUrl)) fail(`the list does not show ${hookUrl}`);
      if (!webhookId) {
        // Find it by its link in the list.
        for (const link of await page.locator('a[href^="/admin/webhooks/"]').all()) {
          const href = await link.getAttribute('href');
          const row = link.locator('xpath=ancestor::tr[1]');
          const rowText = (await row.count()) ? await row.innerText() : await link.innerText();
          const id = UUID.exec(href)?.[0];
          if (id && rowText.includes(hookUrl)) webhookId = id;
        }
      }
      if (!webhookId) fail('cannot tell the new webhook\'s id (neither from the URL after creating it nor from a link in the list)');
    });
    const token = await adminToken();
    await step('an event: POST /users', async () => {
      const response = await api('POST', '/users', { token, body: { email: `hooked-${RUN}@example.com`, name: 'Hooked User' } });
      if (response.status !== 201) fail(`POST /users answered ${response.status}`);
    });
    const first = await step('the receiver gets the delivery (and answers 500)', async () => {
      const posts = await receiver.waitForPosts(1, BACKGROUND_MS);
      if (!posts) fail(`no POST reached ${hookUrl} within ${BACKGROUND_MS} ms`);
      if (!posts[0].headers['webhook-id']) fail('the POST has no webhook-id header');
      return posts[0];
    });
    const failedRow = page.locator('tr[data-delivery-id]', { hasText: /failed/i });
    const failedId = await step('/admin/webhooks/{id} lists the failed delivery', () => eventually(
      'a tr[data-delivery-id] containing "failed"',
      async () => {
        await visit(page, `/admin/webhooks/${webhookId}`);
        return (await failedRow.count()) ? failedRow.first().getAttribute('data-delivery-id') : null;
      },
      10000,
    ));
    await audit(page, 'webhook-detail');
    await step('the failed delivery\'s page opens from its row', async () => {
      const link = failedRow.first().locator('a');
      if (await link.count()) {
        await Promise.all([page.waitForURL(/\/deliveries\//), link.first().click()]);
      } else {
        await visit(page, `/admin/webhooks/${webhookId}/deliveries/${failedId}`);
        log('  (the row has no link; opened the delivery by its URL)');
      }
      expectPath(page, `/admin/webhooks/${webhookId}/deliveries/${failedId}`);
      await audit(page, 'delivery-detail');
    });
    const postsBefore = receiver.requests.filter((r) => r.method === 'POST').length;
    await step('"Replay" sends the message again with the same webhook-id', async () => {
      await press(page, 'Replay');
      const alert = page.getByRole('alert');
      if (await alert.count() && await alert.first().isVisible()) fail(`"Replay" shows an alert: "${(await alert.first().innerText()).trim()}"`);
      const posts = await receiver.waitForPosts(postsBefore + 1, BACKGROUND_MS);
      if (!posts) fail(`no new POST within ${BACKGROUND_MS} ms of "Replay"`);
      const again = posts.slice(postsBefore).find((p) => p.headers['webhook-id'] === first.headers['webhook-id']);
      if (!again) fail(`the new POSTs carry webhook-id ${posts.slice(postsBefore).map((p) => p.headers['webhook-id']).join(', ')}, not ${first.headers['webhook-id']}`);
      if (again.status !== 200) fail(`the receiver answered the replay ${again.status}`);
    });
    await step('the replay\'s delivery is listed as succeeded', () => eventually(
      'a tr[data-delivery-id] other than the failed one, containing "succeeded"',
      async () => {
        await visit(page, `/admin/webhooks/${webhookId}`);
        for (const row of await page.locator('tr[data-delivery-id]', { hasText: /succeeded/i }).all()) {
          if ((await row.getAttribute('data-delivery-id')) !== failedId) return true;
        }
        return false;
      },
      10000,
    ));
    await step('the API agrees: a delivery replaying the failed one succeeded', async () => {
      const response = await api('GET', `/webhooks/${webhookId}/deliveries`, { token });
      const items = response.json?.items ?? response.json ?? [];
      const replay = Array.isArray(items) ? items.find((d) => d.replay_of === failedId) : null;
      if (!replay) fail(`GET /webhooks/${webhookId}/deliveries (${response.status}) has no delivery with replay_of ${failedId}`);
      if (replay.state !== 'succeeded') fail(`the replay's state is ${replay.state}`);
    });
  } finally {
    await receiver.close();
    // Later events would otherwise go on to a receiver that is gone.
    if (webhookId) await api('DELETE', `/webhooks/${webhookId}`, { token: await adminToken() }).catch(() => {});
  }
});

await scenario(12, 'the audit trail and settings pages render', async () => {
  if (!admin) fail('no signed-in admin');
  const { page } = admin;
  await step('GET /admin/audit', async () => {
    await visit(page, '/admin/audit');
    expectPath(page, '/admin/audit');
    await audit(page, 'audit');
  });
  await step('GET /admin/settings', async () => {
    await visit(page, '/admin/settings');
    expectPath(page, '/admin/settings');
    await audit(page, 'settings');
  });
  for (const name of ['overview', 'users', 'user-new', 'jobs', 'webhooks', 'events']) {
    // Pages an earlier failure kept this run from auditing.
    if (axeResults[name]) continue;
    const target = { overview: '/admin/', users: '/admin/users', 'user-new': '/admin/users/new', jobs: '/admin/jobs', webhooks: '/admin/webhooks', events: '/admin/events' }[name];
    await step(`GET ${target} (not audited yet)`, async () => {
      await visit(page, target);
      await audit(page, name);
    });
  }
});

await scenario(8, 'a non-admin account is refused by the console', async () => {
  const email = `member-${RUN}@example.com`;
  await step(`POST /auth/register ${email}`, () => register(email, 'Plain Member'));
  const context = await newContext('member');
  const page = await newPage(context);
  await step('signing in stays on /admin/login with role=alert', async () => {
    await visit(page, '/admin/login');
    await submitSignIn(page, email, PASSWORD);
    expectPath(page, '/admin/login');
    await expectVisible(page.getByRole('alert'), 'role=alert after a non-admin signs in');
  });
  await step('GET /admin/users still sends it to sign in', async () => {
    await visit(page, '/admin/users');
    expectPath(page, '/admin/login');
  });
  await context.close();
});

await scenario(7, 'sign out', async () => {
  if (!admin) fail('no signed-in admin');
  const { page } = admin;
  currentPage = page;
  await step('"Sign out" in the header lands on /admin/login', async () => {
    await visit(page, '/admin/');
    await press(page, 'Sign out');
    expectPath(page, '/admin/login');
  });
  await step('GET /admin/ now redirects to sign in', async () => {
    await visit(page, '/admin/');
    expectPath(page, '/admin/login');
  });
});

await scenario(9, 'axe: no serious or critical violations on any page (and every page was checked)', async () => {
  const file = path.join(OUT, `axe-results-${DB}.json`);
  fs.writeFileSync(file, `${JSON.stringify({ db: DB, url: BASE, axe: require('axe-core/package.json').version, pages: axeResults }, null, 2)}\n`);
  log(`  axe summary: ${file}`);
  const problems = [];
  for (const [name, entry] of Object.entries(axeResults)) {
    if (entry.error) problems.push(`${name}: axe did not run (${shorten(entry.error)})`);
    for (const v of entry.violations) {
      if (v.impact !== 'serious' && v.impact !== 'critical') continue;
      problems.push(`${name} (${entry.url}) [${v.impact}] ${v.id}: ${v.help} at ${v.widths.join('/')} px — ${v.nodes.slice(0, 5).map((n) => n.target).join(', ')}${v.nodes.length > 5 ? `, … ${v.nodes.length} in all` : ''}`);
    }
  }
  const missing = AUDITED.filter((name) => !axeResults[name]);
  if (missing.length) problems.push(`pages never reached, so not checked: ${missing.join(', ')}`);
  for (const problem of problems) log(`  ✗ ${problem}`);
  if (problems.length) fail(`${problems.length} problem(s), listed above`);
});

await scenario(10, 'screenshots of every page at 375 and 1440 px', async () => {
  const missing = [];
  for (const name of AUDITED) {
    for (const { width } of VIEWPORTS) {
      const file = path.join(OUT, `${name}-${width}-${DB}.png`);
      if (!fs.existsSync(file)) missing.push(path.basename(file));
    }
  }
  if (missing.length) fail(`missing: ${missing.join(', ')}`);
  log(`  screenshots in ${OUT}`);
});

await scenario(13, 'no console errors, CSP violations or uncaught exceptions in any page', async () => {
  for (const problem of browserProblems) {
    log(`  ✗ ${problem.kind} on ${problem.page} (${problem.context}): ${problem.text}${problem.source ? ` [${problem.source}]` : ''}`);
  }
  if (browserProblems.length) fail(`${browserProblems.length} problem(s), listed above`);
});

for (const context of contexts) await context.close().catch(() => {});
await browser.close();

log('\n=== summary');
for (const r of results) log(`${r.ok ? 'ok  ' : 'FAIL'} ${r.number}. ${r.title}${r.ok ? '' : `\n       ${r.message.replace(/\n/g, '\n       ')}`}`);
const failed = results.filter((r) => !r.ok).length;
log(`${results.length - failed} passed, ${failed} failed (${DB})`);
process.exit(failed ? 1 : 0);
