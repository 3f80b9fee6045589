//! Stored events: listed and read with their deliveries.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::validate::Check;
use super::{Caller, OtherTenant, Page, PageRequest, ServiceError};
use crate::domain::TopicPattern;
use crate::store::deliveries::{self, DeliveryView};
use crate::store::events::{self, EventFilter, EventView};

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// An event-type pattern (`sales.#`).
    pub event_type: Option<String>,
    pub tenant: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

pub async fn list(
    pool: &PgPool,
    caller: &Caller,
    filter: ListFilter,
    page: PageRequest,
) -> Result<Page<EventView>, ServiceError> {
    let mut check = Check::default();
    let pattern = filter
        .event_type
        .and_then(|p| check.field("type", p.parse::<TopicPattern>()));
    check.finish()?;
    let before = page.after::<(DateTime<Utc>, String, String)>()?;
    let Ok(tenant) = caller.confine(filter.tenant) else {
        return Ok(Page::of(Vec::new(), &page, |e: &EventView| e.id.clone()));
    };
    let rows = events::list(
        pool,
        &EventFilter {
            tenant: tenant.as_deref(),
            type_regex: pattern.map(|p| p.to_dotted_regex()),
            since: filter.since,
            until: filter.until,
            before,
            limit: page.fetch(),
        },
    )
    .await?;
    Ok(Page::of(rows, &page, |e| {
        (
            e.received_at,
            e.tenant_id.clone().unwrap_or_default(),
            e.id.clone(),
        )
    }))
}

/// One event with every delivery made of it.
/// An event with its deliveries.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = EventWithDeliveries)]
pub struct Detailed {
    #[serde(flatten)]
    pub event: EventView,
    pub deliveries: Vec<DeliveryView>,
}

/// The event `id` of the caller's tenant (the admin names the tenant, or gets the one
/// event of that id when only one tenant used it).
pub async fn get(
    pool: &PgPool,
    caller: &Caller,
    id: &str,
    tenant: Option<String>,
) -> Result<Detailed, ServiceError> {
    let tenant = caller
        .confine(tenant)
        .map_err(|OtherTenant| ServiceError::NotFound)?;
    let mut found = events::get(pool, tenant.as_deref(), id).await?;
    let event = match found.len() {
        0 => return Err(ServiceError::NotFound),
        1 => found.remove(0),
        _ => {
            return Err(ServiceError::Conflict(
                "several tenants used this event id: give tenant_id".into(),
            ))
        }
    };
    let key = event.tenant_id.clone().unwrap_or_default();
    let deliveries = deliveries::of_event(pool, caller.scope(), &key, &event.id).await?;
    Ok(Detailed { event, deliveries })
}
