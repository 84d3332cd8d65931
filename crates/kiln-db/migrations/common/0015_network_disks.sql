-- Network-mode nodes' disks: each node's copy-on-write clone of one image version's disk
-- artifact, and the export name that is its credential (a secret minted per clone, kept
-- hashed for the gateway's look-up and sealed for the boot script that hands it to the
-- node itself).
CREATE TABLE network_disks (
    node_id       TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    image         TEXT NOT NULL,
    version       BIGINT NOT NULL,
    base_sha256   TEXT NOT NULL,
    export_hash   TEXT NOT NULL UNIQUE,
    export_sealed TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
