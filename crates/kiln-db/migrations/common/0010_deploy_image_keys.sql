-- Deploys and captures name their image by its key (`PROJECT/NAME`, or `NAME` without a
-- project) since image names became unique per project (0008). A recorded target, request
-- or capture under way naming a project's image by its bare name is rewritten to the key. Before 0008 a name
-- was one image, and the JSON holds one "image" field, so at most one image matches. The
-- JSON is serde_json's compact form; the containment test is REPLACE's, which both
-- backends have (LIKE would read `_` in a name as a wildcard).
UPDATE node_provisioning SET target = (
    SELECT REPLACE(node_provisioning.target, '"image":"' || i.name || '"', '"image":"' || i.project || '/' || i.name || '"')
    FROM images i
    WHERE i.project IS NOT NULL AND REPLACE(node_provisioning.target, '"image":"' || i.name || '"', '') <> node_provisioning.target
)
WHERE target IS NOT NULL AND EXISTS (
    SELECT 1 FROM images i
    WHERE i.project IS NOT NULL AND REPLACE(node_provisioning.target, '"image":"' || i.name || '"', '') <> node_provisioning.target
);
UPDATE node_provisioning SET intent = (
    SELECT REPLACE(node_provisioning.intent, '"image":"' || i.name || '"', '"image":"' || i.project || '/' || i.name || '"')
    FROM images i
    WHERE i.project IS NOT NULL AND REPLACE(node_provisioning.intent, '"image":"' || i.name || '"', '') <> node_provisioning.intent
)
WHERE intent IS NOT NULL AND EXISTS (
    SELECT 1 FROM images i
    WHERE i.project IS NOT NULL AND REPLACE(node_provisioning.intent, '"image":"' || i.name || '"', '') <> node_provisioning.intent
);
UPDATE node_provisioning SET operation = (
    SELECT REPLACE(node_provisioning.operation, '"capture_image":"' || i.name || '"', '"capture_image":"' || i.project || '/' || i.name || '"')
    FROM images i
    WHERE i.project IS NOT NULL
        AND REPLACE(node_provisioning.operation, '"capture_image":"' || i.name || '"', '') <> node_provisioning.operation
)
WHERE operation IS NOT NULL AND EXISTS (
    SELECT 1 FROM images i
    WHERE i.project IS NOT NULL
        AND REPLACE(node_provisioning.operation, '"capture_image":"' || i.name || '"', '') <> node_provisioning.operation
);
