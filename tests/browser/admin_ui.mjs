// Admin UI end to end in headless Debian Chromium (playwright-core).
// Started by tests/suite/admin_ui.rs, which creates the accounts and reads
// our JSON result from the last stdout line; every assertion here fails the
// run with a message. TOTP codes come from otplib, not from the server.
//
// Input (env PC_BROWSER_INPUT, JSON): admin, issuer, password, users
// {name: {secret, used_step}}, carol_session, screenshots, step_up_max_age.

import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { authenticator } from 'otplib';

const input = JSON.parse(process.env.PC_BROWSER_INPUT);
const { admin, password, users, screenshots } = input;
const result = {};
// The page last acted on, described when something fails.
let lastPage = null;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const step = () => Math.floor(Date.now() / 30000);

// A TOTP code never used before for this user: codes are single-use per
// 30 s step and the server accepts the next step too.
async function freshCode(name) {
  const u = users[name];
  let target = Math.max(step(), u.used_step + 1);
  while (target > step() + 1) {
    await sleep(1000);
    target = Math.max(step(), u.used_step + 1);
  }
  u.used_step = target;
  authenticator.options = { epoch: target * 30000 + 1000 };
  const code = authenticator.generate(u.secret);
  authenticator.resetOptions();
  return code;
}

async function shot(page, name) {
  if (screenshots) {
    await page.screenshot({ path: `${screenshots}/${name}.png`, fullPage: true });
  }
}

// Password, then second factor, on the sign-in server's own pages.
async function signInOnIssuer(page, name) {
  await page.waitForURL(/\/login/);
  await page.fill('#username', name);
  await page.fill('#password', password);
  await page.click('button[type=submit]');
  await page.waitForURL(/\/login\/mfa/);
  await page.fill('#code', await freshCode(name));
  await page.click('form[action="/login/mfa"] button[type=submit]');
}

async function signIn(browser, name) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
  const page = await context.newPage();
  lastPage = page;
  const violations = [];
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
  });
  await page.goto(`${admin}/`);
  await signInOnIssuer(page, name);
  await page.waitForURL(`${admin}/`);
  await page.waitForSelector('header.top');
  assert.match(await page.textContent('header.top'), new RegExp(`Signed in as\\s+${name}`));
  // BFF: the browser holds only the admin session cookie, HttpOnly + Strict.
  const cookies = await context.cookies(admin);
  const adminCookie = cookies.find((c) => c.name === 'pc_admin');
  assert.ok(adminCookie, 'admin session cookie set');
  assert.equal(adminCookie.httpOnly, true);
  assert.equal(adminCookie.sameSite, 'Strict');
  for (const c of cookies) {
    assert.ok(!c.value.startsWith('pct_'), `no token in cookie ${c.name}`);
  }
  return { context, page, violations };
}

const browser = await chromium.launch({
  executablePath: process.env.PC_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});

try {
  // ---- Staff A: sessions, terminate with a reason, audit row. ----
  const a = await signIn(browser, 'ann');
  await shot(a.page, 'home');
  await a.page.goto(`${admin}/sessions?user=carol&state=active`);
  const row = a.page.locator(`tr[data-session="${input.carol_session}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /carol/);
  await shot(a.page, 'sessions');
  await row.locator('input[name=reason]').fill('customer reported a stolen phone');
  await row.locator('input[name=ticket_id]').fill('INC-4711');
  await row.locator('button', { hasText: 'Terminate' }).click();
  await a.page.waitForSelector('.flash.ok');
  assert.match(await a.page.textContent('.flash.ok'), /Session terminated/);
  await a.page.goto(`${admin}/sessions?user=carol`);
  const ended = a.page.locator(`tr[data-session="${input.carol_session}"]`);
  assert.match(await ended.textContent(), /ended .* by support \(ann\): customer reported a stolen phone \(ticket INC-4711\)/);
  assert.equal(await ended.locator('button', { hasText: 'Terminate' }).count(), 0);

  await a.page.goto(`${admin}/audit?action=session.`);
  const auditRow = a.page.locator('tr[data-action]', { hasText: input.carol_session });
  await auditRow.first().waitFor();
  const auditText = await auditRow.first().textContent();
  assert.match(auditText, /user:.*/);
  assert.match(auditText, /customer reported a stolen phone \(ticket INC-4711\)/);
  await a.page.click('a.button:has-text("Verify hash chain")');
  await a.page.waitForSelector('#chain-status');
  assert.match(await a.page.textContent('#chain-status'), /Hash chain verified/);
  await shot(a.page, 'audit');

  // ---- Staff A requests a refund above the threshold; cannot approve. ----
  await a.page.goto(`${admin}/refunds`);
  await a.page.fill('input[name=payment_id]', 'pay_browser_1');
  await a.page.fill('input[name=amount_minor]', '25000');
  await a.page.fill('input[name=currency]', 'EUR');
  await a.page.fill('form.request-refund input[name=reason]', 'duplicate charge');
  await a.page.click('form.request-refund button[type=submit]');
  await a.page.waitForURL(/\/refunds\/[^/?]+\?done=refund_requested/);
  const refundId = new URL(a.page.url()).pathname.split('/').pop();
  result.refund_id = refundId;
  assert.equal((await a.page.textContent('#refund-status')).trim(), 'pending_approval');
  assert.equal(await a.page.locator('button', { hasText: 'Approve refund' }).count(), 0);
  assert.match(await a.page.textContent('main'), /another person with the refunds:approve permission must approve it/);
  await shot(a.page, 'refund-requested');
  // A forged approval (valid session and CSRF token) is refused by the server.
  const csrfA = await a.page.getAttribute('form[action="/auth/logout"] input[name=csrf_token]', 'value');
  const forgedApprove = await a.context.request.post(`${admin}/refunds/${refundId}/approve`, {
    form: { csrf_token: csrfA, reason: 'approving my own' },
    maxRedirects: 0,
  });
  assert.equal(forgedApprove.status(), 403, 'requester cannot approve');
  result.own_approval_status = forgedApprove.status();

  // ---- Staff B approves after step-up. ----
  const b = await signIn(browser, 'ben');
  // Let B's second factor grow older than mfa.step_up_max_age.
  await sleep((input.step_up_max_age + 2) * 1000);
  await b.page.goto(`${admin}/refunds`);
  await b.page.locator(`.queue tr[data-refund="${refundId}"]`).waitFor();
  await shot(b.page, 'refunds');
  await b.page.goto(`${admin}/refunds/${refundId}`);
  await b.page.waitForSelector('.step-up');
  assert.equal(await b.page.locator('button', { hasText: 'Approve refund' }).count(), 0);
  await shot(b.page, 'refund-step-up');
  await b.page.click('.step-up a.button');
  await signInOnIssuer(b.page, 'ben');
  await b.page.waitForURL(`${admin}/refunds/${refundId}`);
  await b.page.fill('form.approve input[name=reason]', 'matches the duplicate charge');
  await b.page.click('form.approve button[type=submit]');
  await b.page.waitForSelector('.secret-value');
  assert.equal((await b.page.textContent('#refund-status')).trim(), 'approved');
  assert.equal((await b.page.textContent('#requested-by')).trim(), 'ann');
  assert.equal((await b.page.textContent('#approved-by')).trim(), 'ben');
  assert.equal((await b.page.textContent('#amount')).trim(), '250.00 EUR (25000 minor units)');
  result.approval_token = (await b.page.textContent('.secret-value')).trim();
  await shot(b.page, 'refund-approved');

  // ---- A viewer without sessions:terminate: no button; forged POST refused. ----
  const v = await signIn(browser, 'val');
  await v.page.goto(`${admin}/sessions`);
  await v.page.locator('table.sessions').waitFor();
  assert.equal(await v.page.locator('button', { hasText: 'Terminate' }).count(), 0);
  assert.equal(await v.page.locator('form.terminate, form.terminate-all').count(), 0);
  const csrfV = await v.page.getAttribute('form[action="/auth/logout"] input[name=csrf_token]', 'value');
  const forged = await v.context.request.post(`${admin}/sessions/${input.carol_session2}/terminate`, {
    form: { csrf_token: csrfV, reason: 'forged' },
    maxRedirects: 0,
  });
  assert.equal(forged.status(), 403);
  assert.match(await forged.text(), /sessions:terminate/);
  // And a cross-site POST without the token is refused before anything runs.
  const crossSite = await v.context.request.post(`${admin}/sessions/${input.carol_session2}/terminate`, {
    form: { reason: 'forged' },
    headers: { origin: 'https://evil.example' },
    maxRedirects: 0,
  });
  assert.equal(crossSite.status(), 403);
  result.viewer_forged_status = forged.status();

  // ---- Security admin: users and clients pages. ----
  const s = await signIn(browser, 'sam');
  await s.page.goto(`${admin}/users/carol`);
  await s.page.waitForSelector('dl.facts');
  await shot(s.page, 'user');
  await s.page.goto(`${admin}/clients`);
  await s.page.fill('input[name=client_id]', 'partner-app');
  await s.page.fill('textarea[name=redirect_uris]', 'https://partner.example/cb');
  await s.page.fill('form[action="/clients"] input[name=reason]', 'onboarding partner');
  await s.page.click('form[action="/clients"] button[type=submit]');
  await s.page.waitForSelector('.secret-value');
  result.partner_secret = (await s.page.textContent('.secret-value')).trim();
  await shot(s.page, 'client-registered');

  // Sign-out ends the server session: the old cookie no longer works.
  const before = await s.context.cookies(admin);
  await s.page.click('form[action="/auth/logout"] button');
  await s.page.waitForSelector('text=You have signed out');
  const replay = await browser.newContext();
  await replay.addCookies(before.filter((c) => c.name === 'pc_admin'));
  const again = await replay.request.get(`${admin}/sessions`, { maxRedirects: 0 });
  assert.equal(again.status(), 303, 'old admin cookie is dead after sign-out');
  assert.match(again.headers()['location'], /\/auth\/login/);

  for (const ctx of [a, b, v, s]) {
    assert.deepEqual(ctx.violations, [], 'no CSP violations');
  }
  result.ok = true;
} catch (e) {
  if (lastPage) {
    const text = await lastPage.textContent('body').catch(() => '');
    console.error(`failed on ${lastPage.url()}:\n${(text || '').replace(/\s+/g, ' ').slice(0, 2000)}`);
  }
  throw e;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
