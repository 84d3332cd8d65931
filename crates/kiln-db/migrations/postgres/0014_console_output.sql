-- The recent serial output of each node Kiln reaches (the last bytes only, bounded by the
-- writer), and how many bytes it has received in all, so that a reader following the
-- console asks for what came after the offset it has.
CREATE TABLE console_output (
    node_id    TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    data       BYTEA NOT NULL,
    total      BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
