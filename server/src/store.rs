//! The database: users, faces, attendance, API keys and the audit log, on SQLite or PostgreSQL.
//!
//! One implementation serves both: queries use `$n` placeholders and types both dialects share
//! (64-bit integers, doubles, text, bytes; times as UTC milliseconds), through sqlx's `Any`
//! driver. Only the migrations differ, one folder per dialect.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use rollcall_models::detection::FaceBox;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::auth::Scope;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The addressed row does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A unique constraint was violated.
    #[error("{0}")]
    Conflict(String),
    /// The database URL is not SQLite or PostgreSQL.
    #[error("unsupported database URL `{0}`: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    /// A database error.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Result alias of the storage layer.
pub type StoreResult<T> = Result<T, StoreError>;

/// The two supported SQL dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (the embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A person who can be recognised.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Database id.
    pub id: i64,
    /// The organisation's own identifier (badge, student number), unique when set.
    pub external_id: Option<String>,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: Option<String>,
    /// Department, class or team.
    pub department: Option<String>,
    /// Whether the person is still recognised and marked present.
    pub active: bool,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
    /// When the user was last changed.
    pub updated_at: DateTime<Utc>,
}

/// Fields of a new user.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// See [`User::external_id`].
    pub external_id: Option<String>,
    /// See [`User::name`].
    pub name: String,
    /// See [`User::email`].
    pub email: Option<String>,
    /// See [`User::department`].
    pub department: Option<String>,
}

/// A partial update of a user: `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New external id.
    pub external_id: Option<Option<String>>,
    /// New name.
    pub name: Option<String>,
    /// New e-mail.
    pub email: Option<Option<String>>,
    /// New department.
    pub department: Option<Option<String>>,
    /// Activate or deactivate.
    pub active: Option<bool>,
}

/// Filters of the user list.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Case-insensitive substring of name, e-mail or external id.
    pub search: Option<String>,
    /// Exact department.
    pub department: Option<String>,
}

/// An enrolled face (the embedding itself stays in the database and the index).
#[derive(Debug, Clone, Serialize)]
pub struct FaceRecord {
    /// Database id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Which networks produced the embedding.
    pub model_version: String,
    /// Key of the photo in the object store.
    pub photo_key: String,
    /// Quality score of the face in `0..=1`.
    pub quality: f32,
    /// Where the face was in the photo.
    #[serde(rename = "box")]
    pub bbox: FaceBox,
    /// When it was enrolled.
    pub created_at: DateTime<Utc>,
}

/// A face to store.
#[derive(Debug, Clone)]
pub struct NewFace {
    /// Owner.
    pub user_id: i64,
    /// L2-normalised embedding.
    pub embedding: Vec<f32>,
    /// Which networks produced it.
    pub model_version: String,
    /// Key of the photo in the object store.
    pub photo_key: String,
    /// Quality score.
    pub quality: f32,
    /// Where the face was in the photo.
    pub bbox: FaceBox,
}

/// A face embedding with its owner, as the index needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEmbedding {
    /// Face id.
    pub face_id: i64,
    /// Owner.
    pub user_id: i64,
    /// L2-normalised embedding.
    pub embedding: Vec<f32>,
}

/// One attendance mark, with the user's details.
#[derive(Debug, Clone, Serialize)]
pub struct AttendanceRecord {
    /// Database id.
    pub id: i64,
    /// Who was seen.
    pub user_id: i64,
    /// Their name.
    pub user_name: String,
    /// Their external id.
    pub external_id: Option<String>,
    /// Their department.
    pub department: Option<String>,
    /// First sighting of this mark.
    pub seen_at: DateTime<Utc>,
    /// Last sighting folded into this mark.
    pub last_seen_at: DateTime<Utc>,
    /// Sightings folded into this mark.
    pub sightings: i64,
    /// Camera that saw them.
    pub camera_id: Option<String>,
    /// Best similarity of the mark's first sighting.
    pub similarity: f32,
    /// Where the face was.
    #[serde(rename = "box")]
    pub bbox: FaceBox,
    /// How the sighting arrived (`api`, `live`, …).
    pub source: String,
}

/// A sighting to record.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// Who was seen.
    pub user_id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Camera.
    pub camera_id: Option<String>,
    /// Match similarity.
    pub similarity: f32,
    /// Face box.
    pub bbox: FaceBox,
    /// How it arrived.
    pub source: String,
}

/// Whether a sighting made a new mark or was folded into a recent one.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Marked {
    /// The mark's id.
    pub id: i64,
    /// `true` for a new mark, `false` when folded into one inside the dedupe window.
    pub recorded: bool,
}

/// Filters of attendance queries and exports.
#[derive(Debug, Clone, Default)]
pub struct AttendanceFilter {
    /// Marks first seen at or after.
    pub from: Option<DateTime<Utc>>,
    /// Marks first seen before.
    pub to: Option<DateTime<Utc>>,
    /// One user.
    pub user_id: Option<i64>,
    /// One department.
    pub department: Option<String>,
    /// One camera.
    pub camera_id: Option<String>,
}

/// A page request: 1-based page number and page size.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// 1-based page number.
    pub number: i64,
    /// Items per page.
    pub size: i64,
}

/// One page of items and the number of the next page, if any.
#[derive(Debug, Clone, Serialize)]
pub struct Paged<T> {
    /// The items.
    pub items: Vec<T>,
    /// Next page number, `null` on the last page.
    pub next_page: Option<i64>,
}

/// An API key as listed (the secret itself is never stored).
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    /// Database id.
    pub id: i64,
    /// Human name.
    pub name: String,
    /// First characters of the key, to recognise it.
    pub prefix: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last authenticated use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// How this key appears in the audit log.
    pub fn actor(&self) -> String {
        format!("key:{}:{}", self.id, self.name)
    }
}

/// The database handle.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

fn opt_time(v: Option<i64>) -> Option<DateTime<Utc>> {
    v.map(time)
}

/// Encodes an embedding as little-endian `f32` bytes.
pub fn embedding_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Decodes little-endian `f32` bytes.
pub fn embedding_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

const USER_COLS: &str =
    "id, external_id, name, email, department, deactivated_at, created_at, updated_at";
const FACE_COLS: &str = "id, user_id, model_version, photo_key, quality, box_x, box_y, box_width, box_height, created_at";
const KEY_COLS: &str = "id, name, prefix, scopes, created_at, last_used_at, revoked_at";

fn user_row(r: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: r.try_get("id")?,
        external_id: r.try_get("external_id")?,
        name: r.try_get("name")?,
        email: r.try_get("email")?,
        department: r.try_get("department")?,
        active: r.try_get::<Option<i64>, _>("deactivated_at")?.is_none(),
        created_at: time(r.try_get("created_at")?),
        updated_at: time(r.try_get("updated_at")?),
    })
}

fn box_row(r: &AnyRow) -> Result<FaceBox, sqlx::Error> {
    Ok(FaceBox {
        x: r.try_get::<f64, _>("box_x")? as f32,
        y: r.try_get::<f64, _>("box_y")? as f32,
        width: r.try_get::<f64, _>("box_width")? as f32,
        height: r.try_get::<f64, _>("box_height")? as f32,
    })
}

fn face_row(r: &AnyRow) -> Result<FaceRecord, sqlx::Error> {
    Ok(FaceRecord {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        model_version: r.try_get("model_version")?,
        photo_key: r.try_get("photo_key")?,
        quality: r.try_get::<f64, _>("quality")? as f32,
        bbox: box_row(r)?,
        created_at: time(r.try_get("created_at")?),
    })
}

fn key_row(r: &AnyRow) -> Result<ApiKey, sqlx::Error> {
    let scopes: String = r.try_get("scopes")?;
    Ok(ApiKey {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        prefix: r.try_get("prefix")?,
        scopes: scopes
            .split(',')
            .filter_map(|s| Scope::from_str(s).ok())
            .collect(),
        created_at: time(r.try_get("created_at")?),
        last_used_at: opt_time(r.try_get("last_used_at")?),
        revoked_at: opt_time(r.try_get("revoked_at")?),
    })
}

fn attendance_row(r: &AnyRow) -> Result<AttendanceRecord, sqlx::Error> {
    Ok(AttendanceRecord {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        user_name: r.try_get("name")?,
        external_id: r.try_get("external_id")?,
        department: r.try_get("department")?,
        seen_at: time(r.try_get("seen_at")?),
        last_seen_at: time(r.try_get("last_seen_at")?),
        sightings: r.try_get("sightings")?,
        camera_id: r.try_get("camera_id")?,
        similarity: r.try_get::<f64, _>("similarity")? as f32,
        bbox: box_row(r)?,
        source: r.try_get("source")?,
    })
}

fn embedding_rows(rows: &[AnyRow]) -> StoreResult<Vec<StoredEmbedding>> {
    rows.iter()
        .map(|r| {
            Ok(StoredEmbedding {
                face_id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                embedding: embedding_from_bytes(&r.try_get::<Vec<u8>, _>("embedding")?),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// A bound value of a dynamically built query.
enum Bind {
    Int(i64),
    Text(String),
}

/// `WHERE …` (or nothing) for an attendance filter over `attendance a JOIN users u`, with
/// placeholders numbered from `$1`, and the values to bind in order.
fn attendance_where(filter: &AttendanceFilter) -> (String, Vec<Bind>) {
    let mut clauses = Vec::new();
    let mut binds = Vec::new();
    let mut push = |clause: &str, bind: Bind| {
        binds.push(bind);
        clauses.push(format!("{clause} ${}", binds.len()));
    };
    if let Some(t) = filter.from {
        push("a.seen_at >=", Bind::Int(ms(t)));
    }
    if let Some(t) = filter.to {
        push("a.seen_at <", Bind::Int(ms(t)));
    }
    if let Some(id) = filter.user_id {
        push("a.user_id =", Bind::Int(id));
    }
    if let Some(d) = &filter.department {
        push("u.department =", Bind::Text(d.clone()));
    }
    if let Some(c) = &filter.camera_id {
        push("a.camera_id =", Bind::Text(c.clone()));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (sql, binds)
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for b in binds {
        q = match b {
            Bind::Int(v) => q.bind(v),
            Bind::Text(v) => q.bind(v),
        };
    }
    q
}

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://…`), creating a SQLite file and its
    /// folder when missing.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            if let Some(dir) = Path::new(file)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Sqlx(sqlx::Error::Io(e)))?;
            }
            let sep = if url.contains('?') { '&' } else { '?' };
            (Dialect::Sqlite, format!("{url}{sep}mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_owned())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let max = if dialect == Dialect::Sqlite { 1 } else { 16 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(&url)
            .await?;
        if dialect == Dialect::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA foreign_keys = ON")
                .execute(&pool)
                .await?;
        }
        Ok(Self { pool, dialect })
    }

    /// The dialect of the connected database.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Applies pending migrations of this dialect.
    pub async fn migrate(&self) -> StoreResult<()> {
        match self.dialect {
            Dialect::Sqlite => {
                sqlx::migrate!("../migrations/sqlite")
                    .run(&self.pool)
                    .await?
            }
            Dialect::Postgres => {
                sqlx::migrate!("../migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    // ---- users ----

    /// Creates a user.
    pub async fn create_user(&self, new: &NewUser) -> StoreResult<User> {
        let now = ms(Utc::now());
        let sql = format!(
            "INSERT INTO users (external_id, name, email, department, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING {USER_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(new.external_id.clone())
            .bind(new.name.clone())
            .bind(new.email.clone())
            .bind(new.department.clone())
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| conflict_or(e, "external_id is already used by another user"))?;
        Ok(user_row(&row)?)
    }

    /// The user `id`.
    pub async fn get_user(&self, id: i64) -> StoreResult<User> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| user_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("no user with id {id}")))
    }

    /// Users matching `filter`, ordered by name.
    pub async fn list_users(&self, filter: &UserFilter, page: Page) -> StoreResult<Paged<User>> {
        let mut clauses = Vec::new();
        let mut binds = Vec::new();
        if let Some(s) = filter.search.as_ref().filter(|s| !s.is_empty()) {
            binds.push(Bind::Text(format!("%{}%", s.to_lowercase())));
            let n = binds.len();
            clauses.push(format!(
                "(LOWER(name) LIKE ${n} OR LOWER(COALESCE(email, '')) LIKE ${n} OR LOWER(COALESCE(external_id, '')) LIKE ${n})"
            ));
        }
        if let Some(d) = &filter.department {
            binds.push(Bind::Text(d.clone()));
            clauses.push(format!("department = ${}", binds.len()));
        }
        let where_ = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {USER_COLS} FROM users {where_} ORDER BY name, id LIMIT {} OFFSET {}",
            page.size + 1,
            (page.number - 1) * page.size
        );
        let rows = bind_all(sqlx::query(&sql), binds)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(user_row).collect::<Result<Vec<_>, _>>()?;
        Ok(paged(items, page))
    }

    /// Applies `patch` to user `id`.
    pub async fn update_user(&self, id: i64, patch: &UserPatch) -> StoreResult<User> {
        let current = self.get_user(id).await?;
        let now = ms(Utc::now());
        let deactivate = !patch.active.unwrap_or(current.active);
        let row = sqlx::query(&format!(
            "UPDATE users SET external_id = $1, name = $2, email = $3, department = $4, \
             deactivated_at = CASE WHEN $5 = 1 THEN COALESCE(deactivated_at, $6) ELSE NULL END, updated_at = $6 \
             WHERE id = $7 RETURNING {USER_COLS}"
        ))
        .bind(patch.external_id.clone().unwrap_or(current.external_id))
        .bind(patch.name.clone().unwrap_or(current.name))
        .bind(patch.email.clone().unwrap_or(current.email))
        .bind(patch.department.clone().unwrap_or(current.department))
        .bind(i64::from(deactivate))
        .bind(now)
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict_or(e, "external_id is already used by another user"))?;
        Ok(user_row(&row)?)
    }

    /// Deletes user `id` with their faces and attendance; returns the photo keys to erase.
    pub async fn delete_user(&self, id: i64) -> StoreResult<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let keys: Vec<String> = sqlx::query("SELECT photo_key FROM faces WHERE user_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("photo_key"))
            .collect::<Result<_, _>>()?;
        sqlx::query("DELETE FROM faces WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM attendance WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no user with id {id}")));
        }
        tx.commit().await?;
        Ok(keys)
    }

    /// Number of users, and of active users.
    pub async fn count_users(&self) -> StoreResult<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, COUNT(*) - COUNT(deactivated_at) AS active FROM users",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("total")?, row.try_get("active")?))
    }

    // ---- faces ----

    /// Stores faces of an existing user, all or none (one transaction).
    pub async fn add_faces(&self, faces: &[NewFace]) -> StoreResult<Vec<FaceRecord>> {
        let sql = format!(
            "INSERT INTO faces (user_id, embedding, model_version, photo_key, quality, box_x, box_y, box_width, box_height, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {FACE_COLS}"
        );
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(faces.len());
        for face in faces {
            let row = sqlx::query(&sql)
                .bind(face.user_id)
                .bind(embedding_to_bytes(&face.embedding))
                .bind(face.model_version.clone())
                .bind(face.photo_key.clone())
                .bind(f64::from(face.quality))
                .bind(f64::from(face.bbox.x))
                .bind(f64::from(face.bbox.y))
                .bind(f64::from(face.bbox.width))
                .bind(f64::from(face.bbox.height))
                .bind(ms(Utc::now()))
                .fetch_one(&mut *tx)
                .await?;
            out.push(face_row(&row)?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Faces of user `id`, oldest first.
    pub async fn list_faces(&self, user_id: i64) -> StoreResult<Vec<FaceRecord>> {
        let sql = format!("SELECT {FACE_COLS} FROM faces WHERE user_id = $1 ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(face_row).collect::<Result<_, _>>()?)
    }

    /// Embeddings of active users' faces with ids above `after`, by id, at most `limit`: the
    /// face index is built page by page from these.
    pub async fn active_embeddings_after(
        &self,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredEmbedding>> {
        let rows = sqlx::query(
            "SELECT f.id, f.user_id, f.embedding FROM faces f JOIN users u ON u.id = f.user_id \
             WHERE u.deactivated_at IS NULL AND f.id > $1 ORDER BY f.id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        embedding_rows(&rows)
    }

    /// Embeddings of the faces of `ids` whose user is active (unknown ids are skipped).
    pub async fn active_embeddings_of(&self, ids: &[i64]) -> StoreResult<Vec<StoredEmbedding>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "SELECT f.id, f.user_id, f.embedding FROM faces f JOIN users u ON u.id = f.user_id \
                 WHERE u.deactivated_at IS NULL AND f.id IN ({list}) ORDER BY f.id"
            );
            let q = chunk.iter().fold(sqlx::query(&sql), |q, id| q.bind(*id));
            out.extend(embedding_rows(&q.fetch_all(&self.pool).await?)?);
        }
        Ok(out)
    }

    /// Embeddings of user `user_id`'s faces.
    pub async fn user_embeddings(&self, user_id: i64) -> StoreResult<Vec<StoredEmbedding>> {
        let rows =
            sqlx::query("SELECT id, user_id, embedding FROM faces WHERE user_id = $1 ORDER BY id")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        embedding_rows(&rows)
    }

    /// `(face_id, user_id)` of every face of an active user, by id: what the index must hold.
    pub async fn active_face_ids(&self) -> StoreResult<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT f.id, f.user_id FROM faces f JOIN users u ON u.id = f.user_id \
             WHERE u.deactivated_at IS NULL ORDER BY f.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("user_id")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Number of faces of active users.
    pub async fn count_active_faces(&self) -> StoreResult<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM faces f JOIN users u ON u.id = f.user_id \
             WHERE u.deactivated_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?)
    }

    // ---- attendance ----

    /// Records a sighting: a new mark, or folded into the user's mark whose last sighting is
    /// within `window` (one transaction; the user row is locked so concurrent sightings fold).
    pub async fn record_sighting(
        &self,
        s: &Sighting,
        window: chrono::Duration,
    ) -> StoreResult<Marked> {
        let mut tx = self.pool.begin().await?;
        let at = ms(s.at);
        let locked = sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
            .bind(s.user_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "no user with id {}",
                s.user_id
            )));
        }
        let recent = sqlx::query(
            "SELECT id FROM attendance WHERE user_id = $1 AND last_seen_at >= $2 ORDER BY last_seen_at DESC LIMIT 1",
        )
        .bind(s.user_id)
        .bind(at - window.num_milliseconds())
        .fetch_optional(&mut *tx)
        .await?;
        let marked = match recent {
            Some(row) => {
                let id: i64 = row.try_get("id")?;
                sqlx::query(
                    "UPDATE attendance SET last_seen_at = CASE WHEN last_seen_at > $1 THEN last_seen_at ELSE $1 END, \
                     sightings = sightings + 1 WHERE id = $2",
                )
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                Marked {
                    id,
                    recorded: false,
                }
            }
            None => {
                let row = sqlx::query(
                    "INSERT INTO attendance (user_id, seen_at, last_seen_at, sightings, camera_id, similarity, box_x, box_y, box_width, box_height, source) \
                     VALUES ($1, $2, $2, 1, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(s.user_id)
                .bind(at)
                .bind(s.camera_id.clone())
                .bind(f64::from(s.similarity))
                .bind(f64::from(s.bbox.x))
                .bind(f64::from(s.bbox.y))
                .bind(f64::from(s.bbox.width))
                .bind(f64::from(s.bbox.height))
                .bind(s.source.clone())
                .fetch_one(&mut *tx)
                .await?;
                Marked {
                    id: row.try_get("id")?,
                    recorded: true,
                }
            }
        };
        tx.commit().await?;
        Ok(marked)
    }

    /// Folds a sighting into mark `id` of the same user when its last sighting is within
    /// `window`; `None` when there is no such mark (deleted, or the window has passed), and the
    /// caller records the sighting the full way. This is the cheap path after a dedupe key said
    /// the user already has a mark.
    pub async fn fold_sighting(
        &self,
        id: i64,
        s: &Sighting,
        window: chrono::Duration,
    ) -> StoreResult<Option<Marked>> {
        let at = ms(s.at);
        let done = sqlx::query(
            "UPDATE attendance SET last_seen_at = CASE WHEN last_seen_at > $1 THEN last_seen_at ELSE $1 END, \
             sightings = sightings + 1 WHERE id = $2 AND user_id = $3 AND last_seen_at >= $4",
        )
        .bind(at)
        .bind(id)
        .bind(s.user_id)
        .bind(at - window.num_milliseconds())
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() == 1).then_some(Marked {
            id,
            recorded: false,
        }))
    }

    /// Attendance marks matching `filter`, newest first; `page = None` returns all of them.
    pub async fn list_attendance(
        &self,
        filter: &AttendanceFilter,
        page: Option<Page>,
    ) -> StoreResult<Paged<AttendanceRecord>> {
        let (where_, binds) = attendance_where(filter);
        let limit = page
            .map(|p| format!("LIMIT {} OFFSET {}", p.size + 1, (p.number - 1) * p.size))
            .unwrap_or_default();
        let sql = format!(
            "SELECT a.id, a.user_id, u.name, u.external_id, u.department, a.seen_at, a.last_seen_at, a.sightings, \
             a.camera_id, a.similarity, a.box_x, a.box_y, a.box_width, a.box_height, a.source \
             FROM attendance a JOIN users u ON u.id = a.user_id {where_} ORDER BY a.seen_at DESC, a.id DESC {limit}"
        );
        let rows = bind_all(sqlx::query(&sql), binds)
            .fetch_all(&self.pool)
            .await?;
        let items = rows
            .iter()
            .map(attendance_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match page {
            Some(p) => paged(items, p),
            None => Paged {
                items,
                next_page: None,
            },
        })
    }

    // ---- API keys ----

    /// Stores a key by its hash.
    pub async fn create_api_key(
        &self,
        name: &str,
        prefix: &str,
        hash: &str,
        scopes: &[Scope],
    ) -> StoreResult<ApiKey> {
        let scopes = scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (name, prefix, hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING {KEY_COLS}"
        ))
        .bind(name.to_owned())
        .bind(prefix.to_owned())
        .bind(hash.to_owned())
        .bind(scopes)
        .bind(ms(Utc::now()))
        .fetch_one(&self.pool)
        .await?;
        Ok(key_row(&row)?)
    }

    /// The unrevoked key with this hash, its last use updated.
    pub async fn authenticate(&self, hash: &str) -> StoreResult<Option<ApiKey>> {
        let row = sqlx::query(&format!(
            "UPDATE api_keys SET last_used_at = $1 WHERE hash = $2 AND revoked_at IS NULL RETURNING {KEY_COLS}"
        ))
        .bind(ms(Utc::now()))
        .bind(hash.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| key_row(&r)).transpose()?)
    }

    /// All keys, newest first.
    pub async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLS} FROM api_keys ORDER BY id DESC"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(key_row).collect::<Result<_, _>>()?)
    }

    /// Number of keys ever created.
    pub async fn count_api_keys(&self) -> StoreResult<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// Revokes key `id`.
    pub async fn revoke_api_key(&self, id: i64) -> StoreResult<()> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(ms(Utc::now()))
                .bind(id)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no API key with id {id}")));
        }
        Ok(())
    }

    /// Every department in use, sorted.
    pub async fn departments(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT department FROM users WHERE department IS NOT NULL ORDER BY department",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("department"))
            .collect::<Result<_, _>>()?)
    }

    // ---- faces by id ----

    /// The face `id`.
    pub async fn get_face(&self, id: i64) -> StoreResult<FaceRecord> {
        let sql = format!("SELECT {FACE_COLS} FROM faces WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| face_row(&r))
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("no face with id {id}")))
    }

    // ---- administrators ----

    /// Sets the password hash of administrator `username`, creating them when new.
    pub async fn set_admin_password(&self, username: &str, hash: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO admins (username, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, updated_at = excluded.updated_at",
        )
        .bind(username.to_owned())
        .bind(hash.to_owned())
        .bind(ms(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The password hash of administrator `username`, if they exist.
    pub async fn admin_password_hash(&self, username: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT password_hash FROM admins WHERE username = $1")
            .bind(username.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("password_hash")).transpose()?)
    }

    // ---- settings ----

    /// Every stored setting as `(name, value)`.
    pub async fn settings(&self) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, value FROM settings ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Stores setting `name`, replacing its value.
    pub async fn put_setting(&self, name: &str, value: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(name.to_owned())
        .bind(value.to_owned())
        .bind(ms(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes setting `name` (its default applies again).
    pub async fn delete_setting(&self, name: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM settings WHERE name = $1")
            .bind(name.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The value of setting `name`, storing `value` first when it is absent; concurrent
    /// callers (replicas starting together) all get the one value that won.
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.to_owned())
        .bind(value.to_owned())
        .bind(ms(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name.to_owned())
            .fetch_one(&self.pool)
            .await?
            .try_get("value")?)
    }

    // ---- audit ----

    /// Appends an entry to the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: Option<String>,
        detail: serde_json::Value,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(ms(Utc::now()))
        .bind(actor.to_owned())
        .bind(action.to_owned())
        .bind(target)
        .bind(detail.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn paged<T>(mut items: Vec<T>, page: Page) -> Paged<T> {
    let more = items.len() as i64 > page.size;
    items.truncate(page.size as usize);
    Paged {
        items,
        next_page: more.then_some(page.number + 1),
    }
}

fn conflict_or(err: sqlx::Error, message: &str) -> StoreError {
    if is_unique_violation(&err) {
        StoreError::Conflict(message.to_owned())
    } else {
        StoreError::Sqlx(err)
    }
}
