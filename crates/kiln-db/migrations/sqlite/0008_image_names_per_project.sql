-- An image's name is unique within its project, not across projects: a tenant must not
-- learn another's image names by colliding with them, nor take a name from another (public
-- names too are per project: boot paths name PROJECT%2FNAME exactly, and a bare NAME the
-- image without a project first). SQLite cannot drop a
-- column's UNIQUE constraint, so the table is rebuilt (the runner turns foreign keys off
-- around SQLite migrations and checks them before committing). Keep in step with
-- postgres/0008_image_names_per_project.sql.
CREATE TABLE images_rebuilt (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    project     TEXT REFERENCES projects(name),
    visibility  TEXT NOT NULL,
    description TEXT NOT NULL,
    os          TEXT,
    arch        TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
INSERT INTO images_rebuilt (id, name, project, visibility, description, os, arch, created_at, updated_at)
    SELECT id, name, project, visibility, description, os, arch, created_at, updated_at FROM images;
DROP TABLE images;
ALTER TABLE images_rebuilt RENAME TO images;
CREATE INDEX images_project ON images(project, name);
CREATE INDEX images_name ON images(name);
CREATE UNIQUE INDEX images_name_in_project ON images(COALESCE(project, ''), name);
