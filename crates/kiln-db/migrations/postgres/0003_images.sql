-- Images, their immutable versions, and the content-addressed blobs the versions' artifacts
-- point at. Keep in step with sqlite/0003_images.sql.
CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    project     TEXT REFERENCES projects(name),
    visibility  TEXT NOT NULL,
    description TEXT NOT NULL,
    os          TEXT,
    arch        TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX images_project ON images(project, name);
CREATE TABLE image_shares (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    project  TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    PRIMARY KEY (image_id, project)
);
-- A blob exists here from just before its bytes are written until gc removes both.
-- refcount counts the artifacts that point at it.
CREATE TABLE blobs (
    sha256     TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    refcount   BIGINT NOT NULL,
    touched_at BIGINT NOT NULL
);
CREATE TABLE image_versions (
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    note       TEXT NOT NULL,
    PRIMARY KEY (image_id, version)
);
CREATE TABLE image_artifacts (
    image_id      TEXT NOT NULL,
    version       BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    sha256        TEXT NOT NULL REFERENCES blobs(sha256),
    format        TEXT NOT NULL,
    compression   TEXT,
    size          BIGINT NOT NULL,
    virtual_size  BIGINT,
    checksums     TEXT NOT NULL,
    source_url    TEXT,
    source_etag   TEXT,
    source_modified TEXT,
    PRIMARY KEY (image_id, version, kind),
    FOREIGN KEY (image_id, version) REFERENCES image_versions(image_id, version) ON DELETE CASCADE
);
CREATE INDEX image_artifacts_blob ON image_artifacts(sha256);
CREATE TABLE image_tags (
    image_id TEXT NOT NULL,
    tag      TEXT NOT NULL,
    version  BIGINT NOT NULL,
    PRIMARY KEY (image_id, tag),
    FOREIGN KEY (image_id, version) REFERENCES image_versions(image_id, version) ON DELETE CASCADE
);
-- Resumable uploads in progress; their bytes are in the spool directory under the id.
CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    project    TEXT REFERENCES projects(name) ON DELETE CASCADE,
    created_by TEXT NOT NULL,
    checksum   TEXT,
    created_at BIGINT NOT NULL
);
