// The web app in Debian's Chromium (playwright-core, no browser download), run by
// tests/browser.rs against a platform it started: BASE_URL is the gateway, CHROMIUM the browser.
// Two users in two browser contexts; the second has WebSocket blocked, so its live notifications
// come over SSE, and later opens a second tab whose badge the first tab's mark-all-read clears. Exits non-zero, saying what failed, on any failure.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const base = process.env.BASE_URL;
assert.ok(base, "BASE_URL is not set");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const tag = Date.now().toString(36);
const WAIT = 5000;

/** A user registered through the UI, live; `blockWebSocket` forces the SSE fallback. */
async function user(name, { blockWebSocket = false } = {}) {
  const context = await browser.newContext();
  if (blockWebSocket) await context.routeWebSocket(/\/realtime\/ws/, (ws) => ws.close());
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error(`[${name}] ${error}`));
  await page.goto(base);
  await page.getByLabel("Email").fill(`${name}${tag}@example.com`);
  await page.getByLabel("Password").fill("correct horse battery");
  await page.getByLabel("Username (new accounts)").fill(`${name}${tag}`);
  await page.getByRole("button", { name: "Register" }).click();
  await page.getByText(`Signed in as @${name}${tag}`).waitFor({ timeout: WAIT });
  await page.locator("#live-state", { hasText: "live" }).waitFor({ timeout: WAIT });
  return { page, context, name: `${name}${tag}` };
}

const notifications = (page) => page.locator("#notifications li");
const badge = (page) => page.locator("#badge");

try {
  const ada = await user("ada");
  const bob = await user("bob", { blockWebSocket: true });
  assert.match(await ada.page.locator("#live-state").textContent(), /\(ws\)/);
  assert.match(await bob.page.locator("#live-state").textContent(), /\(sse\)/);

  // Bob follows Ada in the UI; Ada's list and badge show it, live.
  await bob.page.getByLabel("Search users").fill(ada.name);
  await bob.page.getByRole("button", { name: "Search" }).click();
  await bob.page.getByRole("button", { name: "Follow" }).click();
  const followed = Date.now();
  await notifications(ada.page).filter({ hasText: `${bob.name} started following you` }).waitFor({ timeout: WAIT });
  console.log(`follow shown to ada over WebSocket in ${Date.now() - followed} ms`);
  await ada.page.locator("#badge[data-count='1']").waitFor({ timeout: WAIT });

  // Ada posts; Bob (over SSE) gets it in his list and badge.
  await ada.page.getByLabel("Image URL").fill("https://cdn.example.com/sunset.jpg");
  await ada.page.getByLabel("Caption").fill("sunset");
  await ada.page.getByRole("button", { name: "Post" }).click();
  const posted = Date.now();
  await notifications(bob.page).first().waitFor({ timeout: WAIT });
  console.log(`post shown to bob over SSE in ${Date.now() - posted} ms`);
  await bob.page.locator("#badge[data-count='1']").waitFor({ timeout: WAIT });

  // Bob goes offline; Ada posts three times; back online, Bob shows exactly those three, once.
  await bob.context.setOffline(true);
  for (const caption of ["one", "two", "three"]) {
    await ada.page.getByLabel("Image URL").fill("https://cdn.example.com/a.jpg");
    await ada.page.getByLabel("Caption").fill(caption);
    await ada.page.getByRole("button", { name: "Post" }).click();
    await ada.page.waitForFunction(() => document.querySelector("#post-form [name=caption]").value === "");
  }
  await bob.context.setOffline(false);
  await bob.page.locator("#badge[data-count='4']").waitFor({ timeout: 30_000 });
  await bob.page.waitForTimeout(1000); // anything sent twice would arrive by now
  const ids = await notifications(bob.page).evaluateAll((items) => items.map((li) => li.dataset.id));
  assert.equal(ids.length, 4, `bob's list: ${ids.join(", ")}`);
  assert.equal(new Set(ids).size, 4, "a notification is shown twice");

  // Bob has a second tab open; marking all read in the first clears the badge in both, the
  // second told by the hub (no polling).
  const secondTab = await bob.context.newPage();
  await secondTab.goto(base);
  await secondTab.locator("#live-state", { hasText: "live" }).waitFor({ timeout: WAIT });
  await secondTab.locator("#badge[data-count='4']").waitFor({ timeout: WAIT });
  await bob.page.getByRole("button", { name: "Mark all read" }).click();
  await bob.page.locator("#badge[data-count='0']").waitFor({ timeout: WAIT });
  await secondTab.locator("#badge[data-count='0']").waitFor({ timeout: WAIT });

  // Ada's feed holds her four posts and pages with "load more" only when there is more.
  assert.equal(await ada.page.locator("#feed li").count(), 4);
  assert.ok(await ada.page.getByRole("button", { name: "Load more" }).isDisabled());
  console.log("browser test passed");
} finally {
  await browser.close();
}
