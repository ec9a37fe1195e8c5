//! The signed-in pages, and the kiosk.

use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use chrono::{Days, Utc};
use serde::Deserialize;

use super::charts;
use super::{page, signed_in, Layout, PageError};
use crate::app::AppState;
use crate::error::ApiError;
use crate::routes::attendance::AttendanceQuery;
use crate::routes::PageQuery;
use crate::settings::RuntimeSettings;
use crate::store::{ApiKey, AttendanceRecord, FaceRecord, Page, User, UserFilter};

/// Most people offered in the enrol page's and log filter's pickers.
const PICKER_SIZE: i64 = 500;
/// Days in the overview's chart.
const CHART_DAYS: u32 = 30;

/// One of the latest recognitions on the overview.
struct Recent {
    record: AttendanceRecord,
    face_id: Option<i64>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    layout: Layout,
    present_today: usize,
    enrolled: i64,
    late: Option<usize>,
    work_start: Option<String>,
    daily: String,
    hourly: String,
    latest: Vec<Recent>,
}

/// `GET /`.
pub async fn overview(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let session = signed_in(&req, &state)?;
    let now = Utc::now();
    let today = now.date_naive();
    let since = today
        .checked_sub_days(Days::new(u64::from(CHART_DAYS - 1)))
        .unwrap_or(today)
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc();
    let rows = state
        .store
        .list_attendance(
            &crate::store::AttendanceFilter {
                from: Some(since),
                ..Default::default()
            },
            None,
        )
        .await?
        .items;
    let runtime = RuntimeSettings::load(&state.store, &state.settings).await?;
    let daily_points = charts::daily_presence(&rows, today, CHART_DAYS);
    let present_today = daily_points.last().map_or(0, |p| p.1 as usize);
    let mut latest = Vec::new();
    for record in rows.iter().take(8) {
        let face_id = state
            .store
            .list_faces(record.user_id)
            .await?
            .first()
            .map(|f| f.id);
        latest.push(Recent {
            record: record.clone(),
            face_id,
        });
    }
    page(&Overview {
        layout: Layout::new(session, "overview"),
        present_today,
        enrolled: state.store.count_users().await?.1,
        late: runtime
            .start_time()
            .map(|start| charts::late_arrivals(&rows, today, start)),
        work_start: runtime.work_start.clone(),
        daily: charts::bar_chart("People present per day", &daily_points, 5).render()?,
        hourly: charts::bar_chart(
            "First arrivals by hour (UTC)",
            &charts::arrivals_by_hour(&rows),
            3,
        )
        .render()?,
        latest,
    })
}

/// Query of `GET /people`.
#[derive(Debug, Deserialize)]
pub struct PeopleQuery {
    #[serde(default)]
    search: String,
    #[serde(default)]
    department: String,
    page: Option<i64>,
}

#[derive(Template)]
#[template(path = "people.html")]
struct People {
    layout: Layout,
    users: Vec<User>,
    departments: Vec<String>,
    search: String,
    department: String,
    page: i64,
    prev_link: Option<String>,
    next_link: Option<String>,
}

/// A link to `path` with `pairs` as its query (empty values left out).
fn link(path: &str, pairs: &[(&str, String)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    }
}

/// `GET /people`: search, department filter, pages of 50.
pub async fn people(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<PeopleQuery>,
) -> Result<HttpResponse, PageError> {
    let session = signed_in(&req, &state)?;
    let q = q.into_inner();
    let page_req = PageQuery::page(q.page, None)?;
    let users = state
        .store
        .list_users(
            &UserFilter {
                search: Some(q.search.trim().to_owned()).filter(|s| !s.is_empty()),
                department: Some(q.department.clone()).filter(|s| !s.is_empty()),
            },
            page_req,
        )
        .await?;
    let at = |n: i64| {
        link(
            "/people",
            &[
                ("search", q.search.clone()),
                ("department", q.department.clone()),
                ("page", n.to_string()),
            ],
        )
    };
    page(&People {
        layout: Layout::new(session, "people"),
        departments: state.store.departments().await?,
        prev_link: (page_req.number > 1).then(|| at(page_req.number - 1)),
        next_link: users.next_page.map(at),
        users: users.items,
        search: q.search,
        department: q.department,
        page: page_req.number,
    })
}

#[derive(Template)]
#[template(path = "person.html")]
struct Person {
    layout: Layout,
    user: User,
    faces: Vec<FaceRecord>,
    history: Vec<AttendanceRecord>,
    more_history: bool,
}

/// `GET /people/{id}`: details, photos with their quality, attendance history.
pub async fn person(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    let session = signed_in(&req, &state)?;
    let user = state.store.get_user(*id).await?;
    let faces = state.store.list_faces(user.id).await?;
    let history = state
        .store
        .list_attendance(
            &crate::store::AttendanceFilter {
                user_id: Some(user.id),
                ..Default::default()
            },
            Some(Page {
                number: 1,
                size: 50,
            }),
        )
        .await?;
    page(&Person {
        layout: Layout::new(session, "people"),
        user,
        faces,
        more_history: history.next_page.is_some(),
        history: history.items,
    })
}

/// Query of `GET /enrol`.
#[derive(Debug, Deserialize)]
pub struct EnrolQuery {
    user: Option<i64>,
}

#[derive(Template)]
#[template(path = "enrol.html")]
struct Enrol {
    layout: Layout,
    users: Vec<User>,
    selected: i64,
}

async fn picker(state: &AppState) -> Result<Vec<User>, PageError> {
    Ok(state
        .store
        .list_users(
            &UserFilter::default(),
            Page {
                number: 1,
                size: PICKER_SIZE,
            },
        )
        .await?
        .items)
}

/// `GET /enrol`: upload or capture photos of a person.
pub async fn enrol(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<EnrolQuery>,
) -> Result<HttpResponse, PageError> {
    let session = signed_in(&req, &state)?;
    page(&Enrol {
        layout: Layout::new(session, "enrol"),
        users: picker(&state).await?,
        selected: q.user.unwrap_or(0),
    })
}

#[derive(Template)]
#[template(path = "live.html")]
struct Live {
    layout: Layout,
    dedupe_window_secs: u64,
}

/// `GET /live`: webcam recognition, and recognition of an uploaded photo.
pub async fn live(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let session = signed_in(&req, &state)?;
    let runtime = RuntimeSettings::load(&state.store, &state.settings).await?;
    page(&Live {
        layout: Layout::new(session, "live"),
        dedupe_window_secs: runtime.dedupe_window_secs,
    })
}

#[derive(Template)]
#[template(path = "kiosk.html")]
struct Kiosk;

/// `GET /kiosk`: only the live view, authorised by a `recognize` key the page asks for (or
/// finds in the URL fragment `#key=…`, which browsers never send to the server).
pub async fn kiosk() -> Result<HttpResponse, PageError> {
    page(&Kiosk)
}

#[derive(Template)]
#[template(path = "attendance.html")]
struct Attendance {
    layout: Layout,
    rows: Vec<AttendanceRecord>,
    users: Vec<User>,
    departments: Vec<String>,
    from: String,
    to: String,
    user_id: i64,
    department: String,
    camera_id: String,
    csv_link: String,
    pdf_link: String,
    prev_link: Option<String>,
    next_link: Option<String>,
}

/// Query of `GET /attendance` (the API's filters, as an HTML form sends them).
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    department: String,
    #[serde(default)]
    camera_id: String,
    page: Option<i64>,
}

/// `GET /attendance`: the log with filters, pages of 50, and exports with the same filters.
pub async fn attendance(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<LogQuery>,
) -> Result<HttpResponse, PageError> {
    let session = signed_in(&req, &state)?;
    let q = q.into_inner();
    let user_id =
        match q.user_id.trim() {
            "" => None,
            v => Some(v.parse::<i64>().map_err(|_| {
                ApiError::BadRequest("the person filter must be a person's id".into())
            })?),
        };
    let page_req = PageQuery::page(q.page, None)?;
    let filter = AttendanceQuery::from_parts(&q.from, &q.to, user_id, &q.department, &q.camera_id)
        .filter()?;
    let rows = state.store.list_attendance(&filter, Some(page_req)).await?;
    let filters = [
        ("from", q.from.clone()),
        ("to", q.to.clone()),
        (
            "user_id",
            user_id.map(|u| u.to_string()).unwrap_or_default(),
        ),
        ("department", q.department.clone()),
        ("camera_id", q.camera_id.clone()),
    ];
    let with = |extra: (&'static str, String)| {
        let mut pairs = filters.to_vec();
        pairs.push(extra);
        pairs
    };
    page(&Attendance {
        layout: Layout::new(session, "attendance"),
        csv_link: link("/api/v1/attendance/export", &with(("format", "csv".into()))),
        pdf_link: link("/api/v1/attendance/export", &with(("format", "pdf".into()))),
        prev_link: (page_req.number > 1).then(|| {
            link(
                "/attendance",
                &with(("page", (page_req.number - 1).to_string())),
            )
        }),
        next_link: rows
            .next_page
            .map(|n| link("/attendance", &with(("page", n.to_string())))),
        rows: rows.items,
        users: picker(&state).await?,
        departments: state.store.departments().await?,
        from: q.from,
        to: q.to,
        user_id: user_id.unwrap_or(0),
        department: q.department,
        camera_id: q.camera_id,
    })
}

#[derive(Template)]
#[template(path = "keys.html")]
struct Keys {
    layout: Layout,
    keys: Vec<ApiKey>,
}

/// `GET /keys`.
pub async fn keys(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let session = signed_in(&req, &state)?;
    page(&Keys {
        layout: Layout::new(session, "keys"),
        keys: state.store.list_api_keys().await?,
    })
}

#[derive(Template)]
#[template(path = "settings.html")]
struct Settings {
    layout: Layout,
    current: RuntimeSettings,
}

/// `GET /settings`.
pub async fn settings(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PageError> {
    let session = signed_in(&req, &state)?;
    page(&Settings {
        layout: Layout::new(session, "settings"),
        current: RuntimeSettings::load(&state.store, &state.settings).await?,
    })
}
