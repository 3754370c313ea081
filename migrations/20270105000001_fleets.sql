-- Fleets: one model per group of a train job's rows (a user, say), trained together and stored
-- as one artifact with the groups' tensors stacked. The fleet is a `models` row (its artifact,
-- params, aggregate metrics) with `groups` set; each group is a row of `fleet_members`, and each
-- group that trained is a model of its own (`model_id`, answered by GET /v1/models/{id}), its
-- parameters at `slot` on the artifact's group axis.
ALTER TABLE models ADD COLUMN groups integer CHECK (groups >= 0);  -- NULL: one model, not a fleet

CREATE TABLE fleet_members (
    fleet_id  uuid NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    group_key text NOT NULL,
    model_id  uuid UNIQUE,          -- NULL for a group that failed
    slot      integer,              -- its index on the artifact's group axis; NULL if it failed
    metrics   jsonb,                -- the group's own metrics
    error     jsonb,                -- {code, message}: why the group failed
    PRIMARY KEY (fleet_id, group_key),
    CHECK ((model_id IS NULL) = (slot IS NULL) AND (slot IS NULL) = (error IS NOT NULL))
);

-- The fleets of a tenant, newest first (GET /v1/fleets).
CREATE INDEX models_tenant_fleets ON models (tenant_id, id) WHERE groups IS NOT NULL;
