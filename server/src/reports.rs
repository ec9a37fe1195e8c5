//! Attendance exports: CSV (one row per mark) and a PDF report (one row per person).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use printpdf::{BuiltinFont, IndirectFontRef, Mm, PdfDocument, PdfLayerReference};

use crate::store::{AttendanceFilter, AttendanceRecord};

/// Errors while rendering a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// CSV writing failed.
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    /// PDF rendering failed.
    #[error("pdf: {0}")]
    Pdf(String),
}

const CSV_HEADER: [&str; 12] = [
    "id",
    "user_id",
    "external_id",
    "name",
    "department",
    "seen_at",
    "last_seen_at",
    "sightings",
    "camera_id",
    "similarity",
    "source",
    "box",
];

/// One CSV row per attendance mark, with a header row; times in RFC 3339 UTC.
pub fn to_csv(rows: &[AttendanceRecord]) -> Result<Vec<u8>, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER)?;
    for r in rows {
        let b = r.bbox;
        w.write_record([
            r.id.to_string(),
            r.user_id.to_string(),
            r.external_id.clone().unwrap_or_default(),
            csv_safe(&r.user_name),
            csv_safe(r.department.as_deref().unwrap_or_default()),
            r.seen_at.to_rfc3339(),
            r.last_seen_at.to_rfc3339(),
            r.sightings.to_string(),
            csv_safe(r.camera_id.as_deref().unwrap_or_default()),
            format!("{:.4}", r.similarity),
            r.source.clone(),
            format!("{:.0},{:.0},{:.0},{:.0}", b.x, b.y, b.width, b.height),
        ])?;
    }
    w.into_inner().map_err(|e| ReportError::Pdf(e.to_string()))
}

/// Neutralises spreadsheet formula injection: a cell starting with `= + - @` gets a leading `'`.
fn csv_safe(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

/// Per-person summary of a set of marks.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonSummary {
    /// Name.
    pub name: String,
    /// Department.
    pub department: String,
    /// Earliest sighting.
    pub first_seen: DateTime<Utc>,
    /// Latest sighting.
    pub last_seen: DateTime<Utc>,
    /// Number of marks.
    pub marks: usize,
}

/// Groups marks by person, ordered by name.
pub fn summarise(rows: &[AttendanceRecord]) -> Vec<PersonSummary> {
    let mut by_user: BTreeMap<i64, PersonSummary> = BTreeMap::new();
    for r in rows {
        let e = by_user.entry(r.user_id).or_insert_with(|| PersonSummary {
            name: r.user_name.clone(),
            department: r.department.clone().unwrap_or_default(),
            first_seen: r.seen_at,
            last_seen: r.last_seen_at,
            marks: 0,
        });
        e.first_seen = e.first_seen.min(r.seen_at);
        e.last_seen = e.last_seen.max(r.last_seen_at);
        e.marks += 1;
    }
    let mut out: Vec<_> = by_user.into_values().collect();
    out.sort_by_key(|a| a.name.to_lowercase());
    out
}

const PAGE_W: f32 = 210.0;
const PAGE_H: f32 = 297.0;
const ROWS_PER_PAGE: usize = 38;
const COLUMNS: [(&str, f32); 5] = [
    ("Person", 15.0),
    ("Department", 70.0),
    ("First seen (UTC)", 110.0),
    ("Last seen (UTC)", 147.0),
    ("Marks", 184.0),
];

/// A PDF report: title, period, a table of person, department, first seen, last seen and
/// mark count, and page numbers.
pub fn to_pdf(
    rows: &[AttendanceRecord],
    filter: &AttendanceFilter,
) -> Result<Vec<u8>, ReportError> {
    let summary = summarise(rows);
    let pages = summary.len().div_ceil(ROWS_PER_PAGE).max(1);
    let (doc, page1, layer1) =
        PdfDocument::new("Rollcall attendance report", Mm(PAGE_W), Mm(PAGE_H), "page");
    let pdf_err = |e: printpdf::Error| ReportError::Pdf(e.to_string());
    let font = doc
        .add_builtin_font(BuiltinFont::Helvetica)
        .map_err(pdf_err)?;
    let bold = doc
        .add_builtin_font(BuiltinFont::HelveticaBold)
        .map_err(pdf_err)?;
    let period = period_text(rows, filter);
    for (n, chunk) in summary
        .chunks(ROWS_PER_PAGE)
        .chain(summary.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let layer = if n == 0 {
            doc.get_page(page1).get_layer(layer1)
        } else {
            let (p, l) = doc.add_page(Mm(PAGE_W), Mm(PAGE_H), "page");
            doc.get_page(p).get_layer(l)
        };
        let text =
            |layer: &PdfLayerReference, s: &str, size: f32, x: f32, y: f32, f: &IndirectFontRef| {
                layer.use_text(latin1(s), size, Mm(x), Mm(y), f)
            };
        text(
            &layer,
            "Rollcall attendance report",
            18.0,
            15.0,
            280.0,
            &bold,
        );
        text(&layer, &period, 10.0, 15.0, 272.0, &font);
        text(
            &layer,
            &format!("{} people, {} marks", summary.len(), rows.len()),
            10.0,
            15.0,
            266.0,
            &font,
        );
        for (title, x) in COLUMNS {
            text(&layer, title, 10.0, x, 255.0, &bold);
        }
        for (i, p) in chunk.iter().enumerate() {
            let y = 248.0 - i as f32 * 6.0;
            let cells = [
                truncate(&p.name, 30),
                truncate(&p.department, 20),
                p.first_seen.format("%Y-%m-%d %H:%M").to_string(),
                p.last_seen.format("%Y-%m-%d %H:%M").to_string(),
                p.marks.to_string(),
            ];
            for ((_, x), cell) in COLUMNS.iter().zip(cells) {
                text(&layer, &cell, 9.0, *x, y, &font);
            }
        }
        if summary.is_empty() {
            text(
                &layer,
                "No attendance in this period.",
                10.0,
                15.0,
                248.0,
                &font,
            );
        }
        text(
            &layer,
            &format!("Page {} of {}", n + 1, pages),
            9.0,
            175.0,
            10.0,
            &font,
        );
    }
    doc.save_to_bytes().map_err(pdf_err)
}

fn period_text(rows: &[AttendanceRecord], filter: &AttendanceFilter) -> String {
    let from = filter.from.or_else(|| rows.iter().map(|r| r.seen_at).min());
    let to = filter
        .to
        .or_else(|| rows.iter().map(|r| r.last_seen_at).max());
    let fmt = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or("-".into())
    };
    format!("Period: {} to {}", fmt(from), fmt(to))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(max - 3).collect::<String>())
    }
}

/// The built-in PDF fonts cover Latin-1 only; other characters become `?`.
fn latin1(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (c as u32) < 256 && !c.is_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}
