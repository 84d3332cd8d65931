-- An image's name is unique within its project, not across projects: a tenant must not
-- learn another's image names by colliding with them, nor take a name from another (public
-- names too are per project: boot paths name PROJECT%2FNAME exactly, and a bare NAME the
-- image without a project first). Keep in step with
-- sqlite/0008_image_names_per_project.sql.
ALTER TABLE images DROP CONSTRAINT images_name_key;
CREATE INDEX images_name ON images(name);
CREATE UNIQUE INDEX images_name_in_project ON images(COALESCE(project, ''), name);
