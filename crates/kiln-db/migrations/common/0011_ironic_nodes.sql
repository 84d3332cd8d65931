-- What the Ironic-compatible API keeps of a node beyond Kiln's own fields (kiln-types'
-- IronicFields as JSON): Ironic's driver name, the driver_info keys that are not the BMC's,
-- extra and instance_info. It goes with the node. Same in both backends.
CREATE TABLE ironic_nodes (
    node_id    TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    fields     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
