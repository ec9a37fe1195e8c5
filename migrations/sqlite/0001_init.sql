-- Rollcall schema (SQLite). Times are UTC milliseconds since the Unix epoch.
CREATE TABLE users (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id    TEXT UNIQUE,
    name           TEXT NOT NULL,
    email          TEXT,
    department     TEXT,
    deactivated_at INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX users_department ON users (department);

CREATE TABLE faces (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    embedding     BLOB NOT NULL,
    model_version TEXT NOT NULL,
    photo_key     TEXT NOT NULL,
    quality       REAL NOT NULL,
    box_x         REAL NOT NULL,
    box_y         REAL NOT NULL,
    box_width     REAL NOT NULL,
    box_height    REAL NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE INDEX faces_user ON faces (user_id);

CREATE TABLE attendance (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seen_at      INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    sightings    INTEGER NOT NULL DEFAULT 1,
    camera_id    TEXT,
    similarity   REAL NOT NULL,
    box_x        REAL NOT NULL,
    box_y        REAL NOT NULL,
    box_width    REAL NOT NULL,
    box_height   REAL NOT NULL,
    source       TEXT NOT NULL
);
CREATE INDEX attendance_user_seen ON attendance (user_id, seen_at);
CREATE INDEX attendance_seen ON attendance (seen_at);

CREATE TABLE api_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
);
