//! Deliveries: listed with filters, read with every attempt.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Caller, Page, PageRequest, ServiceError};
use crate::store::deliveries::{self, AttemptView, DeliveryView, Filter, Status};

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub tenant: Option<String>,
    pub status: Option<String>,
    pub endpoint_id: Option<Uuid>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub http_status: Option<i32>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

fn status(value: Option<String>) -> Result<Option<String>, ServiceError> {
    const ALL: [Status; 4] = [
        Status::Pending,
        Status::Retrying,
        Status::Success,
        Status::Failed,
    ];
    match value {
        Some(s) if !ALL.iter().any(|a| a.as_str() == s) => Err(ServiceError::invalid(
            "status",
            "one of pending, retrying, success, failed",
        )),
        other => Ok(other),
    }
}

pub async fn list(
    pool: &PgPool,
    caller: &Caller,
    filter: ListFilter,
    page: PageRequest,
) -> Result<Page<DeliveryView>, ServiceError> {
    let status = status(filter.status)?;
    let before = page.after::<Uuid>()?;
    let Ok(tenant) = caller.confine(filter.tenant) else {
        return Ok(Page::of(Vec::new(), &page, |d: &DeliveryView| d.id));
    };
    let rows = deliveries::list(
        pool,
        &Filter {
            scope: caller.scope().map(String::from),
            tenant,
            status,
            endpoint_id: filter.endpoint_id,
            event_id: filter.event_id,
            event_type: filter.event_type,
            http_status: filter.http_status,
            since: filter.since,
            until: filter.until,
            before,
            limit: page.fetch(),
        },
    )
    .await?;
    Ok(Page::of(rows, &page, |d| d.id))
}

/// A delivery with every attempt, oldest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = DeliveryWithAttempts)]
pub struct Detailed {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    pub attempts: Vec<AttemptView>,
}

pub async fn get(pool: &PgPool, caller: &Caller, id: Uuid) -> Result<Detailed, ServiceError> {
    let delivery = deliveries::get(pool, caller.scope(), id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let attempts = deliveries::attempts(pool, id).await?;
    Ok(Detailed { delivery, attempts })
}
