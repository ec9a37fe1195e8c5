//! Reading uploads safely: a byte cap enforced while streaming (413), then decoding off the
//! async runtime with format sniffing, a pixel cap and EXIF orientation (415 / 422).

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use image::RgbImage;
use rollcall_models::image_io::decode_rgb;

use crate::error::ApiError;

/// Text fields and image files of one upload.
#[derive(Debug, Default)]
pub struct Upload {
    /// Image files, in order, with their form field name (`raw` for a bare body).
    pub files: Vec<(String, Bytes)>,
    /// Other form fields.
    pub fields: Vec<(String, String)>,
}

impl Upload {
    /// The first text field named `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn too_large_by_header(req: &HttpRequest, limit: usize) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > limit)
}

/// Reads a multipart form or a raw image body, at most `limit` bytes in all.
pub async fn read_upload(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Upload, ApiError> {
    if too_large_by_header(req, limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !is_multipart {
        let body = read_capped(payload, limit).await?;
        return Ok(Upload {
            files: vec![("raw".into(), body)],
            fields: Vec::new(),
        });
    }
    let mut form = Multipart::new(req.headers(), payload);
    let mut upload = Upload::default();
    let mut total = 0usize;
    while let Some(field) = form.next().await {
        let mut field =
            field.map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?;
        let name = field.name().unwrap_or_default().to_owned();
        let is_file = field
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .is_some();
        let mut data = BytesMut::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::BadRequest(format!("malformed multipart body: {e}")))?;
            total += chunk.len();
            if total > limit {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            data.extend_from_slice(&chunk);
        }
        if is_file {
            upload.files.push((name, data.freeze()));
        } else {
            let text = String::from_utf8(data.to_vec()).map_err(|_| {
                ApiError::BadRequest(format!("form field `{name}` is not UTF-8 text"))
            })?;
            upload.fields.push((name, text));
        }
    }
    Ok(upload)
}

async fn read_capped(mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Decodes an image on the blocking pool: 415 for other formats, 422 for corrupt or oversized images.
pub async fn decode(bytes: Bytes, max_pixels: u64) -> Result<RgbImage, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::Unprocessable {
            code: "empty_image",
            message: "the image is empty".into(),
        });
    }
    web::block(move || decode_rgb(&bytes, max_pixels))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}
