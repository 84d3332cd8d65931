-- A group's name is unique within its project, not across projects. A group is keyed by
-- `PROJECT/NAME` (`NAME` for a group without a project, as before); members, cloud-init
-- configs and boot targets refer to the key. Same in both backends: the new tables refer to
-- each other under their new names, which follow the renames (PostgreSQL by table, SQLite
-- by rewriting the references), and the old children are dropped before their parent.
CREATE TABLE node_groups_rebuilt (
    key         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    project     TEXT REFERENCES projects(name),
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
INSERT INTO node_groups_rebuilt (key, name, project, description, created_at)
    SELECT CASE WHEN project IS NULL THEN name ELSE project || '/' || name END, name, project, description, created_at
    FROM node_groups;
CREATE TABLE group_members_rebuilt (
    group_key TEXT NOT NULL REFERENCES node_groups_rebuilt(key) ON DELETE CASCADE,
    node_id   TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    position  BIGINT NOT NULL,
    PRIMARY KEY (group_key, node_id)
);
INSERT INTO group_members_rebuilt (group_key, node_id, position)
    SELECT g.key, m.node_id, m.position FROM group_members m JOIN node_groups_rebuilt g ON g.name = m.group_name;
CREATE TABLE cloud_init_groups_rebuilt (
    group_key  TEXT PRIMARY KEY REFERENCES node_groups_rebuilt(key) ON DELETE CASCADE,
    meta_data  TEXT NOT NULL,
    content    TEXT,
    updated_at BIGINT NOT NULL
);
INSERT INTO cloud_init_groups_rebuilt (group_key, meta_data, content, updated_at)
    SELECT g.key, c.meta_data, c.content, c.updated_at FROM cloud_init_groups c JOIN node_groups_rebuilt g ON g.name = c.group_name;
UPDATE boot_targets SET value = (SELECT g.key FROM node_groups_rebuilt g WHERE g.name = boot_targets.value)
    WHERE kind = 'group' AND value IN (SELECT name FROM node_groups_rebuilt WHERE project IS NOT NULL);
DROP TABLE group_members;
DROP TABLE cloud_init_groups;
DROP TABLE node_groups;
ALTER TABLE node_groups_rebuilt RENAME TO node_groups;
ALTER TABLE group_members_rebuilt RENAME TO group_members;
ALTER TABLE cloud_init_groups_rebuilt RENAME TO cloud_init_groups;
CREATE INDEX group_members_node ON group_members(node_id);
CREATE INDEX node_groups_project ON node_groups(project, name);
