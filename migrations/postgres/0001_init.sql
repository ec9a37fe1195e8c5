-- Rollcall schema (PostgreSQL). Times are UTC milliseconds since the Unix epoch.
CREATE TABLE users (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id    TEXT UNIQUE,
    name           TEXT NOT NULL,
    email          TEXT,
    department     TEXT,
    deactivated_at BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX users_department ON users (department);

CREATE TABLE faces (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    embedding     BYTEA NOT NULL,
    model_version TEXT NOT NULL,
    photo_key     TEXT NOT NULL,
    quality       DOUBLE PRECISION NOT NULL,
    box_x         DOUBLE PRECISION NOT NULL,
    box_y         DOUBLE PRECISION NOT NULL,
    box_width     DOUBLE PRECISION NOT NULL,
    box_height    DOUBLE PRECISION NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX faces_user ON faces (user_id);

CREATE TABLE attendance (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seen_at      BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    sightings    BIGINT NOT NULL DEFAULT 1,
    camera_id    TEXT,
    similarity   DOUBLE PRECISION NOT NULL,
    box_x        DOUBLE PRECISION NOT NULL,
    box_y        DOUBLE PRECISION NOT NULL,
    box_width    DOUBLE PRECISION NOT NULL,
    box_height   DOUBLE PRECISION NOT NULL,
    source       TEXT NOT NULL
);
CREATE INDEX attendance_user_seen ON attendance (user_id, seen_at);
CREATE INDEX attendance_seen ON attendance (seen_at);

CREATE TABLE api_keys (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

CREATE TABLE audit_log (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
);
