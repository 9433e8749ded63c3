-- Hyper's metadata schema, SQLite flavour. Timestamps are UTC text in the
-- fixed-width form 2006-01-02T15:04:05.000000Z (so they sort in time order);
-- JSON is text checked with json_valid. Keep in step with
-- ../postgres/0001_init.sql.

-- Cluster membership: one row per node, renewed every few seconds.
CREATE TABLE nodes (
    name       TEXT PRIMARY KEY,
    address    TEXT NOT NULL,
    renewed_at TEXT NOT NULL,
    budget     TEXT CHECK (budget IS NULL OR json_valid(budget)),
    images     TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(images)),
    cordoned   INTEGER NOT NULL DEFAULT 0 CHECK (cordoned IN (0, 1)),
    arch       TEXT NOT NULL DEFAULT '',
    driver     TEXT NOT NULL DEFAULT '',
    version    TEXT NOT NULL DEFAULT '',
    started_at TEXT
) STRICT;

CREATE TABLE images (
    id         TEXT PRIMARY KEY,
    ref        TEXT NOT NULL DEFAULT '',
    label      TEXT NOT NULL DEFAULT '',
    digest     TEXT NOT NULL DEFAULT '',
    arch       TEXT NOT NULL DEFAULT '',
    size       INTEGER NOT NULL DEFAULT 0 CHECK (size >= 0),
    config     TEXT CHECK (config IS NULL OR json_valid(config)),
    created_at TEXT NOT NULL
) STRICT;

-- A layer is a frozen writable disk: on an image (parent_id NULL) or on
-- another layer.
CREATE TABLE layers (
    id         TEXT PRIMARY KEY,
    parent_id  TEXT REFERENCES layers (id),
    image_id   TEXT NOT NULL REFERENCES images (id),
    node       TEXT NOT NULL DEFAULT '',
    label      TEXT NOT NULL DEFAULT '',
    size       INTEGER NOT NULL DEFAULT 0 CHECK (size >= 0),
    created_at TEXT NOT NULL
) STRICT;
CREATE INDEX layers_image_id ON layers (image_id);
CREATE INDEX layers_parent_id ON layers (parent_id);
CREATE INDEX layers_node ON layers (node);

-- VMs keep their image and layer ids without foreign keys: a stopped VM is
-- history and must not keep its image from being deleted.
CREATE TABLE vms (
    id            TEXT PRIMARY KEY,
    node          TEXT NOT NULL,
    image_id      TEXT NOT NULL DEFAULT '',
    layer_id      TEXT NOT NULL DEFAULT '',
    instance_type TEXT NOT NULL DEFAULT '',
    arch          TEXT NOT NULL DEFAULT '',
    boot_args     TEXT NOT NULL DEFAULT '',
    labels        TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
    state         TEXT NOT NULL,
    last_error    TEXT NOT NULL DEFAULT '',
    restarts      INTEGER NOT NULL DEFAULT 0,
    uid           INTEGER NOT NULL DEFAULT 0 CHECK (uid >= 0 AND uid <= 4294967295),
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    stopped_at    TEXT,
    expires_at    TEXT
) STRICT;
CREATE INDEX vms_node ON vms (node, id);
CREATE INDEX vms_state ON vms (state, id);
CREATE INDEX vms_image_id ON vms (image_id);
CREATE INDEX vms_layer_id ON vms (layer_id);

-- Jail uids claimed per node. The primary key hands a uid out once; the
-- unique (node, vm_id) gives a VM at most one. No foreign key to vms: a
-- node claims the uid before it records the VM.
CREATE TABLE uids (
    node       TEXT NOT NULL,
    uid        INTEGER NOT NULL CHECK (uid > 0 AND uid <= 4294967295),
    vm_id      TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    PRIMARY KEY (node, uid),
    UNIQUE (node, vm_id)
) STRICT;
