//! Users and face enrolment.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use image::RgbImage;
use rand::Rng;
use rollcall_models::detection::FaceBox;
use rollcall_models::pipeline::Face;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::app::AppState;
use crate::auth::{authorize, Scope};
use crate::cache::IndexEvent;
use crate::error::ApiError;
use crate::index::{FaceIndex, StoredEmbedding};
use crate::routes::PageQuery;
use crate::settings::RuntimeSettings;
use crate::store::{FaceRecord, NewFace, NewUser, UserFilter, UserPatch};
use crate::upload::{decode, read_upload};

/// Body of `POST /users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    name: String,
    email: Option<String>,
    external_id: Option<String>,
    department: Option<String>,
}

/// Body of `PATCH /users/{id}`: absent fields stay, `null` clears.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    external_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    department: Option<Option<String>>,
    active: Option<bool>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Query of `GET /users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListUsers {
    search: Option<String>,
    department: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

/// Trims a text field and checks its length and characters.
fn clean(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.chars().count() > max {
        return Err(ApiError::BadRequest(format!(
            "`{field}` is longer than {max} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "`{field}` contains control characters"
        )));
    }
    Ok(v.to_owned())
}

fn clean_opt(field: &str, value: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    value
        .map(|v| clean(field, &v, max))
        .transpose()
        .map(|v| v.filter(|s| !s.is_empty()))
}

fn clean_name(name: &str) -> Result<String, ApiError> {
    let name = clean("name", name, 200)?;
    if name.is_empty() {
        return Err(ApiError::BadRequest("`name` must not be empty".into()));
    }
    Ok(name)
}

fn clean_email(email: Option<String>) -> Result<Option<String>, ApiError> {
    let email = clean_opt("email", email, 254)?;
    if let Some(e) = &email {
        let valid = e
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !e.contains(' '));
        if !valid {
            return Err(ApiError::BadRequest(format!(
                "`email` is not an e-mail address: {e:?}"
            )));
        }
    }
    Ok(email)
}

/// `POST /users`.
pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let key = authorize(&req, &state.store, Scope::Enroll).await?;
    let body = body.into_inner();
    let new = NewUser {
        name: clean_name(&body.name)?,
        email: clean_email(body.email)?,
        external_id: clean_opt("external_id", body.external_id, 100)?,
        department: clean_opt("department", body.department, 100)?,
    };
    let user = state.store.create_user(&new).await?;
    state
        .store
        .audit(
            &key.actor(),
            "user.create",
            Some(user.id.to_string()),
            json!({ "name": user.name }),
        )
        .await?;
    Ok(HttpResponse::Created().json(user))
}

/// `GET /users`.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<ListUsers>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.store, Scope::Read).await?;
    let q = q.into_inner();
    let page = PageQuery::page(q.page, q.per_page)?;
    let users = state
        .store
        .list_users(
            &UserFilter {
                search: q.search,
                department: q.department,
            },
            page,
        )
        .await?;
    Ok(HttpResponse::Ok().json(users))
}

/// `GET /users/{id}`: the user with their faces.
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.store, Scope::Read).await?;
    let user = state.store.get_user(*id).await?;
    let faces = state.store.list_faces(user.id).await?;
    let mut body = serde_json::to_value(&user).map_err(ApiError::internal)?;
    body["faces"] = serde_json::to_value(faces).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(body))
}

/// `PATCH /users/{id}`; deactivating removes the user from recognition, activating restores it
/// (on every replica, through the shared cache's events).
pub async fn update(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<PatchUser>,
) -> Result<HttpResponse, ApiError> {
    let key = authorize(&req, &state.store, Scope::Admin).await?;
    let b = body.into_inner();
    let patch = UserPatch {
        name: b.name.as_deref().map(clean_name).transpose()?,
        email: b.email.map(clean_email).transpose()?,
        external_id: b
            .external_id
            .map(|v| clean_opt("external_id", v, 100))
            .transpose()?,
        department: b
            .department
            .map(|v| clean_opt("department", v, 100))
            .transpose()?,
        active: b.active,
    };
    let user = state.store.update_user(*id, &patch).await?;
    let faces = state.store.user_embeddings(user.id).await?;
    if user.active {
        for e in faces {
            state.index.upsert(e.face_id, e.user_id, &e.embedding);
            state.cache.publish(IndexEvent::Upsert(e)).await;
        }
    } else {
        state.index.remove_user(user.id);
        let face_ids = faces.iter().map(|e| e.face_id).collect();
        state
            .cache
            .publish(IndexEvent::RemoveUser {
                user_id: user.id,
                face_ids,
            })
            .await;
    }
    state
        .store
        .audit(
            &key.actor(),
            "user.update",
            Some(user.id.to_string()),
            json!({ "active": user.active }),
        )
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

/// `DELETE /users/{id}`: erases the user, their faces, photos, index entries and attendance.
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let key = authorize(&req, &state.store, Scope::Admin).await?;
    let face_ids = state
        .store
        .list_faces(*id)
        .await?
        .iter()
        .map(|f| f.id)
        .collect();
    let photo_keys = state.store.delete_user(*id).await?;
    state.index.remove_user(*id);
    state
        .cache
        .publish(IndexEvent::RemoveUser {
            user_id: *id,
            face_ids,
        })
        .await;
    for photo in &photo_keys {
        if let Err(e) = state.photos.delete(photo).await {
            tracing::warn!(error = %e, photo, "could not delete a photo of a deleted user");
        }
    }
    state
        .store
        .audit(
            &key.actor(),
            "user.delete",
            Some(id.to_string()),
            json!({ "photos_erased": photo_keys.len() }),
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The single trustworthy face of an enrolment photo, or why there is none.
fn enrolment_face(mut faces: Vec<Face>, photo: usize) -> Result<Face, ApiError> {
    match faces.len() {
        0 => Err(ApiError::Unprocessable { code: "no_face", message: format!("photo {photo}: no face was found") }),
        1 => {
            let face = faces.remove(0);
            if face.quality.acceptable {
                Ok(face)
            } else {
                Err(ApiError::Unprocessable {
                    code: "low_quality",
                    message: format!(
                        "photo {photo}: the face is too small or too blurry (quality {:.2}); use a sharper, closer photo",
                        face.quality.score
                    ),
                })
            }
        }
        n => Err(ApiError::Unprocessable {
            code: "multiple_faces",
            message: format!("photo {photo}: {n} faces were found; an enrolment photo must show exactly one person"),
        }),
    }
}

/// `POST /users/{id}/faces`: multipart with one or more `photo` files. Every photo is checked
/// before anything is stored, so a rejected request leaves no face, photo or index entry.
pub async fn enroll(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<i64>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let key = authorize(&req, &state.store, Scope::Enroll).await?;
    let user = state.store.get_user(*id).await?;
    let threshold = RuntimeSettings::load(&state.store, &state.settings)
        .await?
        .match_threshold;
    let upload = read_upload(&req, payload, state.settings.max_upload_bytes).await?;
    let photos: Vec<Bytes> = upload
        .files
        .into_iter()
        .filter(|(n, _)| n == "photo")
        .map(|(_, b)| b)
        .collect();
    if photos.is_empty() {
        return Err(ApiError::BadRequest(
            "send one or more images in multipart field `photo`".into(),
        ));
    }
    let mut accepted: Vec<(Bytes, Face)> = Vec::new();
    for (i, bytes) in photos.into_iter().enumerate() {
        let image = decode(bytes.clone(), state.settings.max_pixels).await?;
        let faces = state
            .queue
            .submit(image)
            .await
            .map_err(crate::routes::recognize::queue_error)?;
        let face = enrolment_face(faces, i + 1)?;
        if let Some(hit) = state.index.search(&face.embedding, 1).into_iter().next() {
            if hit.user_id != user.id && hit.similarity >= threshold {
                return Err(ApiError::Conflict(format!(
                    "photo {}: this face is already enrolled for user {} (similarity {:.3})",
                    i + 1,
                    hit.user_id,
                    hit.similarity
                )));
            }
        }
        accepted.push((bytes, face));
    }
    let mut new_faces = Vec::with_capacity(accepted.len());
    for (bytes, face) in &accepted {
        let photo_key = format!(
            "users/{}/{:032x}.img",
            user.id,
            rand::thread_rng().gen::<u128>()
        );
        if let Err(e) = state.photos.put(&photo_key, bytes.clone()).await {
            erase_photos(&state, &new_faces).await;
            return Err(ApiError::internal(e));
        }
        new_faces.push(NewFace {
            user_id: user.id,
            embedding: face.embedding.clone(),
            model_version: state.model_version.into(),
            photo_key,
            quality: face.quality.score,
            bbox: face.detection.bbox,
        });
    }
    let stored: Vec<FaceRecord> = match state.store.add_faces(&new_faces).await {
        Ok(stored) => stored,
        Err(e) => {
            erase_photos(&state, &new_faces).await;
            return Err(e.into());
        }
    };
    if user.active {
        for (record, new) in stored.iter().zip(&new_faces) {
            state.index.upsert(record.id, user.id, &new.embedding);
            state
                .cache
                .publish(IndexEvent::Upsert(StoredEmbedding {
                    face_id: record.id,
                    user_id: user.id,
                    embedding: new.embedding.clone(),
                }))
                .await;
        }
    }
    state
        .store
        .audit(
            &key.actor(),
            "face.enroll",
            Some(user.id.to_string()),
            json!({ "faces": stored.len() }),
        )
        .await?;
    Ok(HttpResponse::Created().json(json!({ "user_id": user.id, "faces": stored })))
}

async fn erase_photos(state: &AppState, faces: &[NewFace]) {
    for f in faces {
        if let Err(e) = state.photos.delete(&f.photo_key).await {
            tracing::warn!(error = %e, key = f.photo_key, "could not erase the photo of a failed enrolment");
        }
    }
}

/// Width of a face thumbnail in pixels.
const THUMBNAIL_SIDE: u32 = 128;

/// `GET /faces/{id}/thumbnail`: the face's enrolment photo cropped to the face (with a margin)
/// as a small JPEG.
pub async fn thumbnail(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.store, Scope::Read).await?;
    let face = state.store.get_face(*id).await?;
    let bytes = state
        .photos
        .get(&face.photo_key)
        .await
        .map_err(ApiError::internal)?;
    let image = decode(bytes, state.settings.max_pixels).await?;
    let jpeg = web::block(move || crop_face(&image, face.bbox))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("image/jpeg")
        .insert_header((
            actix_web::http::header::CACHE_CONTROL,
            "private, max-age=3600",
        ))
        .body(jpeg))
}

/// The square around `face` (40% margin, clipped to the image), scaled to a thumbnail, as JPEG.
fn crop_face(image: &RgbImage, face: FaceBox) -> Result<Vec<u8>, image::ImageError> {
    let (iw, ih) = (image.width() as f32, image.height() as f32);
    let side = face.width.max(face.height) * 1.4;
    let x0 = (face.x + face.width / 2.0 - side / 2.0).clamp(0.0, iw - 1.0);
    let y0 = (face.y + face.height / 2.0 - side / 2.0).clamp(0.0, ih - 1.0);
    let w = side.min(iw - x0).max(1.0);
    let h = side.min(ih - y0).max(1.0);
    let crop =
        image::imageops::crop_imm(image, x0 as u32, y0 as u32, w as u32, h as u32).to_image();
    let out_h = ((THUMBNAIL_SIDE as f32) * h / w).round().max(1.0) as u32;
    let thumb = image::imageops::resize(
        &crop,
        THUMBNAIL_SIDE,
        out_h,
        image::imageops::FilterType::Triangle,
    );
    let mut out = std::io::Cursor::new(Vec::new());
    thumb.write_to(&mut out, image::ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}
