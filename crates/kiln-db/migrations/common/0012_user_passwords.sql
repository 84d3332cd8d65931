-- People's passwords (argon2id PHC strings, never the password), and the failed attempts in
-- a row that lock an account for a while, kept here so that every replica counts them.
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN failed_logins BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until BIGINT;
