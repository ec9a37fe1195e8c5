//! Attendance log and exports.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{authorize, Scope};
use crate::error::ApiError;
use crate::reports;
use crate::routes::PageQuery;
use crate::store::AttendanceFilter;

/// Filters shared by the log and the exports.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttendanceQuery {
    /// RFC 3339 time or `YYYY-MM-DD` (start of that day, UTC), inclusive.
    from: Option<String>,
    /// RFC 3339 time or `YYYY-MM-DD` (the whole day included), exclusive.
    to: Option<String>,
    user_id: Option<i64>,
    department: Option<String>,
    camera_id: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
    /// `csv` or `pdf` (exports only).
    format: Option<String>,
}

fn parse_time(field: &str, v: &str, end_of_day: bool) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
        ApiError::BadRequest(format!(
            "`{field}` must be an RFC 3339 time or a YYYY-MM-DD date"
        ))
    })?;
    let day = if end_of_day {
        day.succ_opt().unwrap_or(day)
    } else {
        day
    };
    Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

impl AttendanceQuery {
    /// The filters of the log page's form (empty strings mean no filter).
    pub fn from_parts(
        from: &str,
        to: &str,
        user_id: Option<i64>,
        department: &str,
        camera_id: &str,
    ) -> Self {
        let some = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        Self {
            from: some(from),
            to: some(to),
            user_id,
            department: some(department),
            camera_id: some(camera_id),
            page: None,
            per_page: None,
            format: None,
        }
    }

    /// The validated store filter.
    pub fn filter(&self) -> Result<AttendanceFilter, ApiError> {
        Ok(AttendanceFilter {
            from: self
                .from
                .as_deref()
                .map(|v| parse_time("from", v, false))
                .transpose()?,
            to: self
                .to
                .as_deref()
                .map(|v| parse_time("to", v, true))
                .transpose()?,
            user_id: self.user_id,
            department: self.department.clone().filter(|d| !d.is_empty()),
            camera_id: self.camera_id.clone().filter(|c| !c.is_empty()),
        })
    }
}

/// `GET /attendance`: marks, newest first, paginated.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<AttendanceQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.store, Scope::Read).await?;
    let page = PageQuery::page(q.page, q.per_page)?;
    let rows = state
        .store
        .list_attendance(&q.filter()?, Some(page))
        .await?;
    Ok(HttpResponse::Ok().json(rows))
}

/// `GET /attendance/export?format=csv|pdf`: every mark matching the filters.
pub async fn export(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<AttendanceQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.store, Scope::Read).await?;
    let filter = q.filter()?;
    let format = q.format.as_deref().unwrap_or("csv");
    if !matches!(format, "csv" | "pdf") {
        return Err(ApiError::BadRequest("`format` must be csv or pdf".into()));
    }
    let rows = state.store.list_attendance(&filter, None).await?.items;
    let stamp = Utc::now().format("%Y%m%d-%H%M%S");
    let (body, content_type) = web::block({
        let format = format.to_owned();
        move || match format.as_str() {
            "pdf" => reports::to_pdf(&rows, &filter).map(|b| (b, "application/pdf")),
            _ => reports::to_csv(&rows).map(|b| (b, "text/csv; charset=utf-8")),
        }
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"attendance-{stamp}.{format}\""),
        ))
        .body(body))
}
