// The Instaclone web app: plain DOM on top of the client module (/instaclone.js).

import { ApiError, InstacloneClient } from "/instaclone.js";

const config = await fetch("/config.json").then((r) => r.json()).catch(() => ({}));
const client = new InstacloneClient({ hubUrl: config.hubUrl ?? undefined });
const $ = (id) => document.getElementById(id);
let live = null;
let feedCursor = null;
const shown = new Set();

function text(tag, content, className) {
  const element = document.createElement(tag);
  element.textContent = content;
  if (className) element.className = className;
  return element;
}

function errorMessage(error) {
  return error instanceof ApiError ? error.message : "Something went wrong; try again.";
}

function render() {
  const user = client.user;
  $("signed-out").hidden = Boolean(user);
  $("signed-in").hidden = !user;
  $("sign-out").hidden = !user;
  $("who").textContent = user ? `Signed in as @${user.username}` : "";
  if (user) start();
}

async function start() {
  feedCursor = null;
  shown.clear();
  $("feed").replaceChildren();
  $("notifications").replaceChildren();
  await Promise.all([loadFeed(), loadNotifications()]);
  live?.stop();
  live = client.realtime({
    onNotification: (notification) => {
      if (addNotification(notification, true) && !notification.read) {
        setBadge(Number($("badge").dataset.count ?? 0) + 1);
      }
    },
    onResync: () => loadNotifications(),
    // Marked read in another tab or device: the hub pushes the new count.
    onUnread: (count) => {
      setBadge(count);
      if (count === 0) {
        for (const item of $("notifications").querySelectorAll("li.unread")) {
          item.className = "";
          item.querySelector("button")?.remove();
        }
      }
    },
    onState: (state, transport) => {
      $("live-state").textContent = transport ? `${state} (${transport})` : state;
      if (state === "live") refreshBadge();
      if (state === "signed-out") render();
    },
  });
  live.start();
}

async function loadFeed() {
  const posts = await client.feed({ limit: 10, before: feedCursor ?? undefined });
  for (const post of posts) {
    const item = document.createElement("li");
    const body = document.createElement("div");
    body.append(text("strong", post.caption || "(no caption)"));
    const image = document.createElement("img");
    image.src = post.mediaUrl;
    image.alt = post.caption || "post image";
    image.loading = "lazy";
    body.append(document.createElement("br"), image);
    item.append(body);
    $("feed").append(item);
  }
  feedCursor = posts.length ? posts[posts.length - 1]._id : feedCursor;
  $("more").disabled = posts.length < 10;
}

async function loadNotifications() {
  $("notifications").replaceChildren();
  shown.clear();
  for (const notification of await client.notifications({ limit: 20 })) {
    addNotification(notification, false);
  }
  await refreshBadge();
}

/** Adds a notification to the list unless it is there already; `true` when added. */
function addNotification(notification, atTop) {
  if (shown.has(notification._id)) return false;
  shown.add(notification._id);
  const item = text("li", "");
  item.dataset.id = notification._id;
  item.className = notification.read ? "" : "unread";
  item.append(text("span", notification.message));
  if (!notification.read) {
    const button = text("button", "Mark read", "secondary");
    button.type = "button";
    button.addEventListener("click", async () => {
      await client.markRead(notification._id);
      item.className = "";
      button.remove();
      refreshBadge();
    });
    item.append(button);
  }
  if (atTop) $("notifications").prepend(item);
  else $("notifications").append(item);
  return true;
}

function setBadge(count) {
  $("badge").textContent = String(count);
  $("badge").dataset.count = String(count);
}

/** The unread count from the server (the badge keeps its last value while offline). */
async function refreshBadge() {
  try {
    setBadge(await client.unreadCount());
  } catch {
    /* offline or signed out: corrected on the next refresh */
  }
}

window.addEventListener("online", () => refreshBadge());

$("account-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const action = event.submitter?.value ?? "login";
  $("account-error").textContent = "";
  try {
    if (action === "register") {
      await client.register(form.get("email"), form.get("password"), form.get("username") || undefined);
    } else {
      await client.login(form.get("email"), form.get("password"));
    }
    render();
  } catch (error) {
    $("account-error").textContent = errorMessage(error);
  }
});

$("sign-out").addEventListener("click", async () => {
  live?.stop();
  await client.logout().catch(() => {});
  render();
});

$("post-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  $("post-error").textContent = "";
  try {
    await client.createPost({ mediaUrl: form.get("mediaUrl"), caption: form.get("caption") || undefined });
    event.target.reset();
    feedCursor = null;
    $("feed").replaceChildren();
    await loadFeed();
  } catch (error) {
    $("post-error").textContent = errorMessage(error);
  }
});

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = new FormData(event.target).get("q");
  const [people, following] = await Promise.all([client.searchUsers(query), client.following()]);
  const followed = new Set(following.map((user) => user.id));
  $("people").replaceChildren();
  for (const person of people.filter((p) => p.id !== client.user?.id)) {
    const item = text("li", "");
    item.append(text("span", `@${person.username}`));
    const button = text("button", followed.has(person.id) ? "Unfollow" : "Follow");
    button.type = "button";
    button.addEventListener("click", async () => {
      const following = button.textContent === "Unfollow";
      await (following ? client.unfollow(person.id) : client.follow(person.id));
      button.textContent = following ? "Follow" : "Unfollow";
    });
    item.append(button);
    $("people").append(item);
  }
});

$("more").addEventListener("click", () => loadFeed());
$("read-all").addEventListener("click", async () => {
  await client.markAllRead();
  for (const item of $("notifications").querySelectorAll("li.unread")) {
    item.className = "";
    item.querySelector("button")?.remove();
  }
  refreshBadge();
});

render();
