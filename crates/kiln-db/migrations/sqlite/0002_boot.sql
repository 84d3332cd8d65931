-- Boot parameters (BSS semantics). Keep in step with postgres/0002_boot.sql.
CREATE TABLE boot_params (
    id         TEXT PRIMARY KEY,
    kernel     TEXT,
    initrd     TEXT,
    params     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- A target (a MAC, a host, a NID, a group) belongs to at most one entry.
CREATE TABLE boot_targets (
    kind      TEXT NOT NULL,
    value     TEXT NOT NULL,
    params_id TEXT NOT NULL REFERENCES boot_params(id) ON DELETE CASCADE,
    PRIMARY KEY (kind, value)
);
CREATE INDEX boot_targets_params ON boot_targets(params_id);
