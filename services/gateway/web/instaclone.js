// Instaclone's JavaScript client: the REST API with token refresh, and the realtime connection
// (WebSocket, falling back to Server-Sent Events) that resumes from its last position on every
// reconnect and never hands the same notification out twice. Dependency-free ES module; the
// types are JSDoc, so editors and `tsc --checkJs` read them.
//
//   import { InstacloneClient } from "/instaclone.js";
//   const client = new InstacloneClient();
//   await client.login("ada@example.com", "correct horse battery");
//   const live = client.realtime({ onNotification: (n) => console.log(n) });
//   live.start();

/**
 * @typedef {{ accessToken: string, refreshToken: string }} TokenPair
 * @typedef {{ id: string, email: string, username: string, displayName?: string|null,
 *             bio?: string|null, avatarUrl?: string|null }} User
 * @typedef {{ _id: string, userId: string, type: "follow"|"post_created", message: string,
 *             data: Record<string, unknown>, read: boolean, createdAt: string,
 *             updatedAt: string }} Notification
 * @typedef {"connecting"|"live"|"offline"|"signed-out"} RealtimeState
 * @typedef {{
 *   onNotification?: (notification: Notification) => void,
 *   onResync?: () => void,
 *   onState?: (state: RealtimeState, transport: "ws"|"sse"|null) => void,
 *   onUnread?: (count: number) => void,
 *   transport?: "auto"|"ws"|"sse",
 * }} RealtimeOptions
 */

/** An answer of the API that was not a success: `status` and the error envelope's message. */
export class ApiError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const STORAGE_KEY = "instaclone.session";

export class InstacloneClient {
  /**
   * @param {{ baseUrl?: string, hubUrl?: string, storage?: Storage|null }} [options]
   *   `baseUrl`: the gateway (default: this page's origin); `hubUrl`: the realtime hub
   *   (default: this page's host on port 3005); `storage`: where the session is kept across
   *   reloads (default: `localStorage`; `null` keeps it in memory only).
   */
  constructor(options = {}) {
    const here = typeof location === "undefined" ? "http://localhost:3000" : location.origin;
    this.baseUrl = (options.baseUrl ?? here).replace(/\/$/, "");
    const gateway = new URL(this.baseUrl);
    this.hubUrl = (options.hubUrl ?? `${gateway.protocol}//${gateway.hostname}:3005`).replace(/\/$/, "");
    this.storage = options.storage === undefined && typeof localStorage !== "undefined"
      ? localStorage
      : options.storage ?? null;
    /** @type {{ tokens: TokenPair, user: User } | null} */
    this.session = this.#load();
    /** @type {Promise<TokenPair> | null} */
    this.refreshing = null;
    /** @type {Set<(tokens: TokenPair|null) => void>} */
    this.listeners = new Set();
  }

  /** @returns {User | null} */
  get user() {
    return this.session?.user ?? null;
  }

  /** Calls `listener` whenever the tokens change (`null`: signed out). */
  onTokens(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** @param {string} email @param {string} password @param {string} [username] */
  async register(email, password, username) {
    const body = username ? { email, password, username } : { email, password };
    return this.#signIn(await this.#send("POST", "/auth/register", body, null));
  }

  /** @param {string} email @param {string} password */
  async login(email, password) {
    return this.#signIn(await this.#send("POST", "/auth/login", { email, password }, null));
  }

  async logout() {
    try {
      await this.request("POST", "/auth/logout");
    } finally {
      this.#store(null);
    }
  }

  /** A new token pair from the refresh token; concurrent callers share one refresh. */
  async refresh() {
    if (!this.session) throw new ApiError(401, "Not signed in");
    this.refreshing ??= (async () => {
      try {
        const tokens = await this.#send("POST", "/auth/refresh", undefined, this.session.tokens.refreshToken);
        this.#store({ tokens, user: this.session.user });
        return tokens;
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) this.#store(null);
        throw error;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  /**
   * Calls the API as the signed-in user; an expired access token is refreshed once.
   * @param {string} method @param {string} path @param {unknown} [body]
   */
  async request(method, path, body) {
    if (!this.session) throw new ApiError(401, "Not signed in");
    try {
      return await this.#send(method, path, body, this.session.tokens.accessToken);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401 || !this.session) throw error;
      const tokens = await this.refresh();
      return this.#send(method, path, body, tokens.accessToken);
    }
  }

  me() { return this.request("GET", "/users/me"); }
  /** @param {string} query */
  searchUsers(query) { return this.request("GET", `/users/search?q=${encodeURIComponent(query)}`); }
  following() { return this.request("GET", "/users/following?limit=100"); }
  /** @param {string} userId */
  follow(userId) { return this.request("POST", "/users/follow", { userIdToFollow: userId }); }
  /** @param {string} userId */
  unfollow(userId) { return this.request("POST", "/users/unfollow", { userIdToUnfollow: userId }); }
  /** @param {{ caption?: string, mediaUrl: string }} post */
  createPost(post) { return this.request("POST", "/posts", post); }
  /** One page of the home feed, newest first; `before`: the last post id of the previous page. */
  feed({ limit = 10, before } = {}) {
    return this.request("GET", `/posts/feed?limit=${limit}${before ? `&before=${before}` : ""}`);
  }
  /** @returns {Promise<Notification[]>} */
  notifications({ limit = 20, before } = {}) {
    return this.request("GET", `/notifications/my?limit=${limit}${before ? `&before=${before}` : ""}`);
  }
  async unreadCount() {
    const data = await this.request("GET", "/notifications/unread-count");
    return Number(data.count);
  }
  /** @param {string} id */
  markRead(id) { return this.request("POST", `/notifications/${id}/read`); }
  markAllRead() { return this.request("POST", "/notifications/read-all"); }

  /** The live notification stream of the signed-in user. @param {RealtimeOptions} [options] */
  realtime(options = {}) {
    return new RealtimeConnection(this, options);
  }

  /** A one-time ticket for a WebSocket or EventSource URL. */
  async ticket() {
    const data = await this.request("POST", "/realtime/ticket");
    return /** @type {string} */ (data.ticket);
  }

  async #send(method, path, body, token) {
    const headers = { accept: "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(this.baseUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const envelope = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = Array.isArray(envelope.message) ? envelope.message.join("; ") : envelope.message;
      throw new ApiError(response.status, message || response.statusText);
    }
    return envelope.data;
  }

  #signIn(data) {
    this.#store({ tokens: { accessToken: data.accessToken, refreshToken: data.refreshToken }, user: data.user });
    return data.user;
  }

  #store(session) {
    this.session = session;
    try {
      if (session) this.storage?.setItem(STORAGE_KEY, JSON.stringify(session));
      else this.storage?.removeItem(STORAGE_KEY);
    } catch { /* storage full or denied: the session lives in memory */ }
    for (const listener of this.listeners) listener(session?.tokens ?? null);
  }

  #load() {
    try {
      const raw = this.storage?.getItem(STORAGE_KEY);
      return raw ? JSON.parse(raw) : null;
    } catch {
      return null;
    }
  }
}

/** Control events whose SSE `id:` is a stream position. */
function hasPosition(type) {
  return type === "connected" || type === "resync";
}

/** Close codes of the protocol (docs/realtime-hub.md) after which reconnecting is pointless. */
const SIGNED_OUT = 4004;
const TOKEN_EXPIRED = 4001;
const INVALID_REFRESH = 4003;

/**
 * One user's live notifications: prefers WebSocket, falls back to SSE when WebSocket fails
 * before it opens; reconnects with exponential backoff and jitter, always from the last
 * position it was given (`connected`, each notification, `resync`), so nothing is missed and
 * nothing is shown twice.
 */
export class RealtimeConnection {
  /** @param {InstacloneClient} client @param {RealtimeOptions} options */
  constructor(client, options) {
    this.client = client;
    this.options = options;
    /** @type {string | null} the last id any frame carried */
    this.position = null;
    /** Notification ids already handed out (bounded). */
    this.seen = new Set();
    this.transport = options.transport === "sse" ? "sse" : "ws";
    this.wsFailures = 0;
    this.attempt = 0;
    this.stopped = true;
    /** @type {WebSocket | EventSource | null} */
    this.socket = null;
    this.timer = null;
    this.unsubscribe = null;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    // Refresh the socket's token in-band whenever the client's tokens change.
    this.unsubscribe = this.client.onTokens((tokens) => {
      if (!tokens) return this.#signedOut();
      if (this.socket instanceof WebSocket && this.socket.readyState === WebSocket.OPEN) {
        this.socket.send(JSON.stringify({ type: "refresh", token: tokens.accessToken }));
      }
    });
    this.#connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.unsubscribe?.();
    this.socket?.close();
    this.socket = null;
    this.#state("offline");
  }

  async #connect() {
    if (this.stopped) return;
    this.#state("connecting");
    let ticket;
    try {
      ticket = await this.client.ticket();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return this.#signedOut();
      return this.#retry();
    }
    if (this.stopped) return;
    const query = new URLSearchParams({ ticket });
    if (this.position) query.set("lastEventId", this.position);
    if (this.transport === "ws") this.#openWebSocket(query);
    else this.#openEventSource(query);
  }

  #openWebSocket(query) {
    const url = `${this.client.hubUrl.replace(/^http/, "ws")}/realtime/ws?${query}`;
    let opened = false;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch {
      return this.#webSocketFailed();
    }
    this.socket = socket;
    socket.onopen = () => { opened = true; };
    socket.onmessage = (event) => this.#frame(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (!opened) return this.#webSocketFailed();
      if (event.code === SIGNED_OUT) return this.#signedOut();
      if (event.code === TOKEN_EXPIRED || event.code === INVALID_REFRESH) {
        return this.client.refresh().then(() => this.#retry(true), () => this.#signedOut());
      }
      this.#retry();
    };
  }

  /** WebSocket blocked or failing before it opens: after two tries, use SSE. */
  #webSocketFailed() {
    this.wsFailures += 1;
    if (this.options.transport !== "ws" && this.wsFailures >= 2) this.transport = "sse";
    this.#retry(this.transport === "sse");
  }

  #openEventSource(query) {
    const source = new EventSource(`${this.client.hubUrl}/realtime/sse?${query}`);
    this.socket = source;
    const handle = (event) => {
      const data = event.data ? JSON.parse(event.data) : {};
      if (event.type === "notification") this.#frame({ type: "notification", id: event.lastEventId, data });
      else this.#frame({ ...data, type: event.type, id: hasPosition(event.type) ? event.lastEventId || data.id : undefined });
    };
    for (const name of ["connected", "notification", "resync", "reconnect", "unread", "error"]) {
      source.addEventListener(name, (event) => {
        if (name === "error" && !(event instanceof MessageEvent)) return;
        handle(event);
      });
    }
    // A ticket opens one connection only: EventSource's own reconnect cannot reuse it, so each
    // drop is handled here with a new ticket and the last position.
    source.onerror = () => {
      if (this.socket !== source) return;
      source.close();
      this.socket = null;
      this.#retry();
    };
  }

  /** @param {{ type: string, id?: string, data?: Notification, reason?: string }} frame */
  #frame(frame) {
    switch (frame.type) {
      case "connected":
        this.attempt = 0;
        this.#state("live");
        break;
      case "notification": {
        const notification = frame.data;
        if (!notification || this.seen.has(notification._id) || !this.#isNewer(frame.id)) break;
        this.seen.add(notification._id);
        if (this.seen.size > 1000) this.seen.delete(this.seen.values().next().value);
        this.options.onNotification?.(notification);
        break;
      }
      case "resync":
        this.options.onResync?.();
        break;
      case "unread":
        this.options.onUnread?.(Number(/** @type {any} */ (frame).count ?? 0));
        break;
      default:
        break;
    }
    // A notification only ever moves the position forward; control frames set it.
    if (frame.id && (frame.type !== "notification" || this.#isNewer(frame.id))) this.position = frame.id;
  }

  /** Stream ids are `<ms>-<seq>`, increasing. */
  #isNewer(id) {
    if (!id || !this.position) return true;
    const [ms, seq] = id.split("-").map(Number);
    const [pms, pseq] = this.position.split("-").map(Number);
    return ms > pms || (ms === pms && seq > pseq);
  }

  #retry(now = false) {
    if (this.stopped) return;
    this.#state("offline");
    const base = Math.min(30_000, 500 * 2 ** this.attempt);
    this.attempt += 1;
    const delay = now ? 0 : base / 2 + Math.random() * (base / 2);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.#connect(), delay);
  }

  #signedOut() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.socket?.close();
    this.socket = null;
    this.#state("signed-out");
  }

  #state(state) {
    this.options.onState?.(state, state === "live" ? this.transport : null);
  }
}
