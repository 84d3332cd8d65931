-- People's sessions in the web console: the SHA-256 of the cookie's secret (never the
-- secret), whose session it is, and when it ends. Kept in the store so that any replica
-- serves any signed-in person.
CREATE TABLE web_sessions (
    hash       TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_by_user ON web_sessions (user_name);
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_at);
