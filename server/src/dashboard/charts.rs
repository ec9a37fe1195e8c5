//! Server-rendered SVG bar charts of attendance.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{NaiveDate, Timelike};

use crate::store::AttendanceRecord;

/// Drawing area of a chart, in SVG units.
const WIDTH: f32 = 960.0;
const HEIGHT: f32 = 200.0;
/// Space under the bars for labels.
const LABEL_SPACE: f32 = 20.0;

/// One bar.
pub struct Bar {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
    /// The value drawn.
    pub value: i64,
    /// What the bar stands for (a day, an hour).
    pub label: String,
    /// Whether the label is printed under the bar (others only in the tooltip).
    pub show_label: bool,
    /// Centre, for the label.
    pub cx: f32,
}

/// A bar chart, rendered as SVG by `templates/chart.html`.
#[derive(askama::Template)]
#[template(path = "chart.html")]
pub struct Chart {
    /// Width of the drawing.
    pub width: f32,
    /// Height of the drawing.
    pub height: f32,
    /// Baseline of the bars.
    pub baseline: f32,
    /// Where labels are drawn.
    pub label_y: f32,
    /// The largest value.
    pub max: i64,
    /// The bars.
    pub bars: Vec<Bar>,
    /// A text summary for screen readers.
    pub summary: String,
}

/// Lays out `points` as bars, labelling every `label_every`-th.
pub fn bar_chart(title: &str, points: &[(String, i64)], label_every: usize) -> Chart {
    let max = points.iter().map(|p| p.1).max().unwrap_or(0).max(1);
    let baseline = HEIGHT - LABEL_SPACE;
    let slot = WIDTH / points.len().max(1) as f32;
    let bars = points
        .iter()
        .enumerate()
        .map(|(i, (label, value))| {
            let h = (baseline - 14.0) * *value as f32 / max as f32;
            Bar {
                x: i as f32 * slot + slot * 0.15,
                y: baseline - h,
                w: slot * 0.7,
                h,
                value: *value,
                label: label.clone(),
                show_label: i % label_every.max(1) == 0,
                cx: i as f32 * slot + slot / 2.0,
            }
        })
        .collect();
    let total: i64 = points.iter().map(|p| p.1).sum();
    Chart {
        width: WIDTH,
        height: HEIGHT,
        baseline,
        label_y: HEIGHT - 5.0,
        max,
        bars,
        summary: format!("{title}: {total} in all, at most {max} in one bar"),
    }
}

/// First mark of each person on each day.
fn arrivals(
    rows: &[AttendanceRecord],
) -> BTreeMap<(NaiveDate, i64), chrono::DateTime<chrono::Utc>> {
    let mut first = BTreeMap::new();
    for r in rows {
        first
            .entry((r.seen_at.date_naive(), r.user_id))
            .and_modify(|t: &mut chrono::DateTime<chrono::Utc>| *t = (*t).min(r.seen_at))
            .or_insert(r.seen_at);
    }
    first
}

/// People present on each of the `days` days ending with `today` (oldest first).
pub fn daily_presence(
    rows: &[AttendanceRecord],
    today: NaiveDate,
    days: u32,
) -> Vec<(String, i64)> {
    let mut people: BTreeMap<NaiveDate, BTreeSet<i64>> = BTreeMap::new();
    for r in rows {
        people
            .entry(r.seen_at.date_naive())
            .or_default()
            .insert(r.user_id);
    }
    (0..days)
        .rev()
        .filter_map(|back| today.checked_sub_days(chrono::Days::new(back.into())))
        .map(|day| {
            let n = people.get(&day).map_or(0, |s| s.len() as i64);
            (day.format("%m-%d").to_string(), n)
        })
        .collect()
}

/// First arrivals of each person each day, by hour of the day (UTC).
pub fn arrivals_by_hour(rows: &[AttendanceRecord]) -> Vec<(String, i64)> {
    let mut hours = [0i64; 24];
    for t in arrivals(rows).values() {
        hours[t.hour() as usize] += 1;
    }
    hours
        .iter()
        .enumerate()
        .map(|(h, n)| (format!("{h:02}h"), *n))
        .collect()
}

/// How many people first arrived on `day` after `start`.
pub fn late_arrivals(rows: &[AttendanceRecord], day: NaiveDate, start: chrono::NaiveTime) -> usize {
    arrivals(rows)
        .iter()
        .filter(|((d, _), t)| *d == day && t.time() > start)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use rollcall_models::detection::FaceBox;

    fn mark(user_id: i64, y: i32, m: u32, d: u32, h: u32) -> AttendanceRecord {
        let at = Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap();
        AttendanceRecord {
            id: 0,
            user_id,
            user_name: String::new(),
            external_id: None,
            department: None,
            seen_at: at,
            last_seen_at: at,
            sightings: 1,
            camera_id: None,
            similarity: 1.0,
            bbox: FaceBox {
                x: 0.0,
                y: 0.0,
                width: 1.0,
                height: 1.0,
            },
            source: "api".into(),
        }
    }

    #[test]
    fn days_count_people_once_and_hours_count_first_arrivals() {
        let rows = vec![
            mark(1, 2026, 3, 2, 8),
            mark(1, 2026, 3, 2, 15),
            mark(2, 2026, 3, 2, 10),
            mark(1, 2026, 3, 1, 9),
        ];
        let today = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        let days = daily_presence(&rows, today, 3);
        assert_eq!(
            days,
            vec![
                ("02-28".into(), 0),
                ("03-01".into(), 1),
                ("03-02".into(), 2)
            ]
        );
        let hours = arrivals_by_hour(&rows);
        assert_eq!(
            (hours[8].1, hours[9].1, hours[10].1, hours[15].1),
            (1, 1, 1, 0)
        );
        let start = chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap();
        assert_eq!(late_arrivals(&rows, today, start), 1);
        let chart = bar_chart("t", &days, 2);
        assert_eq!(chart.bars.len(), 3);
        assert!(chart.bars[2].h > chart.bars[1].h && chart.bars[0].h == 0.0);
        assert!(chart.bars[0].show_label && !chart.bars[1].show_label);
    }
}
