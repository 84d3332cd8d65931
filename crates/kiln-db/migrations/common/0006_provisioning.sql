-- Provisioning: the operation under way on each node, kept beside nodes.provision_state.
-- Same in both backends. All times are milliseconds since the epoch.
-- intent: a request recorded by the API and not yet taken up by the reconciler (JSON).
-- target: the deploy under way or last done (JSON); operation: how the current operation
--   ends (JSON: clean mode, the state to return to).
-- step: what is being done inside the state; "powering" steps are carried out by a
--   replica holding the lease, the others wait for the agent or the deployed system.
-- agent_token_hash / agent_token_sealed: the per-operation agent token, as SHA-256 hex
--   (checked) and sealed (written into the node's boot script); NULL outside agent work.
-- agent_result, callback_at: observations recorded by the agent and phone-home handlers.
-- due_at: when a reconciler should next look at the node (NULL: only when told).
-- lease_owner, lease_expires: the replica carrying out a step, and until when.
CREATE TABLE node_provisioning (
    node_id            TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    intent             TEXT,
    target             TEXT,
    operation          TEXT,
    step               TEXT,
    command_id         BIGINT NOT NULL,
    agent_token_hash   TEXT,
    agent_token_sealed TEXT,
    agent_seen_at      BIGINT,
    progress           TEXT,
    agent_result       TEXT,
    callback_at        BIGINT,
    last_error         TEXT,
    state_entered_at   BIGINT NOT NULL,
    deadline           BIGINT,
    due_at             BIGINT,
    lease_owner        TEXT,
    lease_expires      BIGINT
);
CREATE INDEX node_provisioning_due ON node_provisioning(due_at);
