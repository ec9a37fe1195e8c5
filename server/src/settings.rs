//! Settings an administrator changes from the dashboard at runtime (match threshold, dedupe
//! window, working hours). They live in the `settings` table, so every replica reads the same
//! values; one never set falls back to the serve settings.

use chrono::NaiveTime;
use serde::{Deserialize, Serialize};

use crate::config::ServeSettings;
use crate::error::ApiError;
use crate::store::{Store, StoreResult};

const THRESHOLD: &str = "match_threshold";
const DEDUPE: &str = "dedupe_window_secs";
const WORK_START: &str = "work_start";
const WORK_END: &str = "work_end";
/// Longest dedupe window accepted: one day.
const MAX_DEDUPE_SECS: u64 = 86_400;

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Minimum cosine similarity for a match, in `(0, 1]`.
    pub match_threshold: f32,
    /// Sightings of one person within this many seconds fold into one mark (0 to 86400).
    pub dedupe_window_secs: u64,
    /// Start of the working day (`HH:MM`, UTC): first arrivals after it are late.
    pub work_start: Option<String>,
    /// End of the working day (`HH:MM`, UTC).
    pub work_end: Option<String>,
}

fn parse_time(field: &str, v: &str) -> Result<NaiveTime, ApiError> {
    NaiveTime::parse_from_str(v.trim(), "%H:%M")
        .map_err(|_| ApiError::BadRequest(format!("`{field}` must be a time as HH:MM")))
}

impl RuntimeSettings {
    /// The stored settings over the defaults of `serve`.
    pub async fn load(store: &Store, defaults: &ServeSettings) -> StoreResult<Self> {
        let mut out = Self {
            match_threshold: defaults.match_threshold,
            dedupe_window_secs: defaults.dedupe_window_secs,
            work_start: None,
            work_end: None,
        };
        for (name, value) in store.settings().await? {
            match name.as_str() {
                THRESHOLD => out.match_threshold = value.parse().unwrap_or(out.match_threshold),
                DEDUPE => out.dedupe_window_secs = value.parse().unwrap_or(out.dedupe_window_secs),
                WORK_START => out.work_start = Some(value),
                WORK_END => out.work_end = Some(value),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The dedupe window.
    pub fn dedupe_window(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.dedupe_window_secs.min(MAX_DEDUPE_SECS) as i64)
    }

    /// The start of the working day, when set.
    pub fn start_time(&self) -> Option<NaiveTime> {
        self.work_start
            .as_deref()
            .and_then(|v| parse_time(WORK_START, v).ok())
    }

    /// Checks the values (400 with the reason) and normalises empty times to none.
    pub fn validated(mut self) -> Result<Self, ApiError> {
        if !(self.match_threshold > 0.0 && self.match_threshold <= 1.0) {
            return Err(ApiError::BadRequest(
                "`match_threshold` must be greater than 0 and at most 1".into(),
            ));
        }
        if self.dedupe_window_secs > MAX_DEDUPE_SECS {
            return Err(ApiError::BadRequest(format!(
                "`dedupe_window_secs` must be at most {MAX_DEDUPE_SECS} (one day)"
            )));
        }
        self.work_start = self.work_start.filter(|v| !v.trim().is_empty());
        self.work_end = self.work_end.filter(|v| !v.trim().is_empty());
        let start = self
            .work_start
            .as_deref()
            .map(|v| parse_time(WORK_START, v))
            .transpose()?;
        let end = self
            .work_end
            .as_deref()
            .map(|v| parse_time(WORK_END, v))
            .transpose()?;
        if let (Some(s), Some(e)) = (start, end) {
            if s >= e {
                return Err(ApiError::BadRequest(
                    "`work_start` must be before `work_end`".into(),
                ));
            }
        }
        self.work_start = start.map(|t| t.format("%H:%M").to_string());
        self.work_end = end.map(|t| t.format("%H:%M").to_string());
        Ok(self)
    }

    /// Stores every value (validate first).
    pub async fn save(&self, store: &Store) -> StoreResult<()> {
        store
            .put_setting(THRESHOLD, &self.match_threshold.to_string())
            .await?;
        store
            .put_setting(DEDUPE, &self.dedupe_window_secs.to_string())
            .await?;
        for (name, value) in [(WORK_START, &self.work_start), (WORK_END, &self.work_end)] {
            match value {
                Some(v) => store.put_setting(name, v).await?,
                None => store.delete_setting(name).await?,
            }
        }
        Ok(())
    }
}
