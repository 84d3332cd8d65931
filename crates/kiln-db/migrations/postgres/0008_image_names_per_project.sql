-- An image's name is unique within its project, not across projects: a tenant must not
-- learn another's image names by colliding with them. A public image's name stays unique
-- among public images, so that /boot/images/NAME/… names one image. Keep in step with
-- sqlite/0008_image_names_per_project.sql.
ALTER TABLE images DROP CONSTRAINT images_name_key;
CREATE INDEX images_name ON images(name);
CREATE UNIQUE INDEX images_name_in_project ON images(COALESCE(project, ''), name);
CREATE UNIQUE INDEX images_public_name ON images(name) WHERE visibility = 'public';
