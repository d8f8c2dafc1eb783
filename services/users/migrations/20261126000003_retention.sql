-- The janitor deletes published outbox rows and old processed-event ids by age.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX processed_events_age ON processed_events (processed_at);
