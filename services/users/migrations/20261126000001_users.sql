-- Accounts. Usernames are stored lower-case (the API lower-cases them), so a plain unique index
-- makes them case-insensitively unique; emails keep the case they were given and are unique on
-- lower(email). The counters are kept in the same transaction as the follow graph and by the
-- post.created / post.deleted consumer, so a profile read never counts rows.
CREATE TABLE users (
    id              uuid PRIMARY KEY,
    email           text NOT NULL,
    username        text NOT NULL CHECK (username ~ '^[a-z0-9._]{3,30}$'),
    display_name    text,
    bio             text,
    avatar_url      text,
    password_hash   text NOT NULL,
    followers_count bigint NOT NULL DEFAULT 0 CHECK (followers_count >= 0),
    following_count bigint NOT NULL DEFAULT 0 CHECK (following_count >= 0),
    posts_count     bigint NOT NULL DEFAULT 0 CHECK (posts_count >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_username_key ON users (username);

-- The follow graph. `id` is a UUID v7 made at follow time, so ordering by it is "newest first"
-- and it is the keyset for both directions.
CREATE TABLE follows (
    id          uuid PRIMARY KEY,
    follower_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followed_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT follows_pair_key UNIQUE (follower_id, followed_id),
    CONSTRAINT follows_not_self CHECK (follower_id <> followed_id)
);
CREATE INDEX follows_followers_page ON follows (followed_id, id DESC);
CREATE INDEX follows_following_page ON follows (follower_id, id DESC);

-- Transactional outbox: written in the same transaction as the follow change, published by the
-- relay, then marked.
CREATE TABLE outbox (
    id           uuid PRIMARY KEY,
    event        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

-- Events this service has consumed, so a redelivered event changes nothing.
CREATE TABLE processed_events (
    id           uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
