-- Cloud-init metadata: cluster defaults, group configs, per-node data. Same in both backends.
CREATE TABLE cloud_init_defaults (
    scope      TEXT PRIMARY KEY,
    data       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- A group's config lives and dies with the group.
CREATE TABLE cloud_init_groups (
    group_name TEXT PRIMARY KEY REFERENCES node_groups(name) ON DELETE CASCADE,
    meta_data  TEXT NOT NULL,
    content    TEXT,
    updated_at BIGINT NOT NULL
);
-- secrets: sealed with the server's key. token_hash: SHA-256 of the node's token, which is
-- shown once when minted. generation: bumped by each deploy (a new instance-id).
CREATE TABLE cloud_init_nodes (
    node_id    TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    meta_data  TEXT NOT NULL,
    secrets    TEXT,
    token_hash TEXT UNIQUE,
    generation BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
