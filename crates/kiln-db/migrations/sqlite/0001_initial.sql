-- Kiln schema, version 1 (SQLite). Keep in step with postgres/0001_initial.sql.
CREATE TABLE projects (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE users (
    name       TEXT PRIMARY KEY,
    admin      BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE memberships (
    project   TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role      TEXT NOT NULL,
    PRIMARY KEY (project, user_name)
);
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE TABLE nodes (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    xname           TEXT UNIQUE,
    nid             BIGINT UNIQUE,
    role            TEXT,
    project         TEXT REFERENCES projects(name),
    provision_state TEXT NOT NULL,
    maintenance     BIGINT NOT NULL,
    bmc             TEXT,
    bmc_password    TEXT,
    properties      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX nodes_project ON nodes(project, name);
CREATE INDEX nodes_state ON nodes(provision_state, name);
CREATE TABLE interfaces (
    mac      TEXT PRIMARY KEY,
    node_id  TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    ip_addrs TEXT NOT NULL
);
CREATE INDEX interfaces_node ON interfaces(node_id);
CREATE TABLE node_groups (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    project     TEXT REFERENCES projects(name),
    created_at  BIGINT NOT NULL
);
CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES node_groups(name) ON DELETE CASCADE,
    node_id    TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    position   BIGINT NOT NULL,
    PRIMARY KEY (group_name, node_id)
);
CREATE INDEX group_members_node ON group_members(node_id);
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    target_kind  TEXT NOT NULL,
    target       TEXT NOT NULL,
    project      TEXT,
    state_before TEXT,
    state_after  TEXT
);
CREATE INDEX events_project ON events(project, id);
CREATE INDEX events_target ON events(target_kind, target, id);
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
