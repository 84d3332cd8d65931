-- What the power-state sync last read from each node's BMC. Same in both backends.
-- failures: consecutive failed reads; fault: the kind of the last failure;
-- maintenance_set: 1 when the sync (not an operator) put the node into maintenance, so
-- the sync may take it out again when the BMC answers.
CREATE TABLE node_power (
    node_id         TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    power_state     TEXT,
    checked_at      BIGINT NOT NULL,
    failures        BIGINT NOT NULL,
    fault           TEXT,
    fault_message   TEXT,
    maintenance_set BIGINT NOT NULL
);
