-- Nodes' serial output, as the pieces it arrived in: each piece's offset in every byte the
-- console has sent, so that a reader following the console asks for what came after the
-- offset it has, and old pieces are deleted whole (no piece is ever rewritten: appending
-- costs the new bytes only).
CREATE TABLE console_chunks (
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    start   BIGINT NOT NULL,
    data    BYTEA NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (node_id, start)
);
