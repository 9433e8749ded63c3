-- Hyper's metadata schema, PostgreSQL flavour. Keep in step with
-- ../sqlite/0001_init.sql; the comments there explain the tables.

CREATE TABLE nodes (
    name       TEXT PRIMARY KEY,
    address    TEXT NOT NULL,
    renewed_at TIMESTAMPTZ NOT NULL,
    budget     JSONB,
    images     JSONB NOT NULL DEFAULT '[]',
    cordoned   BOOLEAN NOT NULL DEFAULT FALSE,
    arch       TEXT NOT NULL DEFAULT '',
    driver     TEXT NOT NULL DEFAULT '',
    version    TEXT NOT NULL DEFAULT '',
    started_at TIMESTAMPTZ
);

CREATE TABLE images (
    id         TEXT PRIMARY KEY,
    ref        TEXT NOT NULL DEFAULT '',
    label      TEXT NOT NULL DEFAULT '',
    digest     TEXT NOT NULL DEFAULT '',
    arch       TEXT NOT NULL DEFAULT '',
    size       BIGINT NOT NULL DEFAULT 0 CHECK (size >= 0),
    config     JSONB,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE layers (
    id         TEXT PRIMARY KEY,
    parent_id  TEXT REFERENCES layers (id),
    image_id   TEXT NOT NULL REFERENCES images (id),
    node       TEXT NOT NULL DEFAULT '',
    label      TEXT NOT NULL DEFAULT '',
    size       BIGINT NOT NULL DEFAULT 0 CHECK (size >= 0),
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX layers_image_id ON layers (image_id);
CREATE INDEX layers_parent_id ON layers (parent_id);
CREATE INDEX layers_node ON layers (node);

CREATE TABLE vms (
    id            TEXT PRIMARY KEY,
    node          TEXT NOT NULL,
    image_id      TEXT NOT NULL DEFAULT '',
    layer_id      TEXT NOT NULL DEFAULT '',
    instance_type TEXT NOT NULL DEFAULT '',
    arch          TEXT NOT NULL DEFAULT '',
    boot_args     TEXT NOT NULL DEFAULT '',
    labels        JSONB NOT NULL DEFAULT '{}',
    state         TEXT NOT NULL,
    last_error    TEXT NOT NULL DEFAULT '',
    restarts      INTEGER NOT NULL DEFAULT 0,
    uid           BIGINT NOT NULL DEFAULT 0 CHECK (uid >= 0 AND uid <= 4294967295),
    created_at    TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ,
    stopped_at    TIMESTAMPTZ,
    expires_at    TIMESTAMPTZ
);
CREATE INDEX vms_node ON vms (node, id);
CREATE INDEX vms_state ON vms (state, id);
CREATE INDEX vms_image_id ON vms (image_id);
CREATE INDEX vms_layer_id ON vms (layer_id);

CREATE TABLE uids (
    node       TEXT NOT NULL,
    uid        BIGINT NOT NULL CHECK (uid > 0 AND uid <= 4294967295),
    vm_id      TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (node, uid),
    UNIQUE (node, vm_id)
);
