//! The in-memory subscription cache: every active endpoint and a trie of their
//! patterns, so matching an event costs no query. A trigger on `herald.endpoints`
//! notifies every change with the endpoint's id (`LISTEN herald_endpoints`): only the
//! changed endpoints are reloaded (everything when a burst is large), and everything is
//! reloaded every minute in case a notification was missed while disconnected.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::domain::{Subject, TopicTrie};
use crate::keyring::Keyring;
use crate::store::endpoints::{self, ActiveEndpoint};

const CHANNEL: &str = "herald_endpoints";
const SAFETY_RELOAD: Duration = Duration::from_secs(60);
/// More changed endpoints than this in one burst: reload everything instead.
const INCREMENTAL_LIMIT: usize = 256;

/// One immutable view of the active endpoints. Patterns are indexed per tenant: an
/// event is matched against its own tenant's trie and the trie of endpoints without a
/// tenant (which receive every tenant's events), so the cost follows what one tenant
/// subscribed, not how many tenants there are.
#[derive(Default)]
pub struct Snapshot {
    /// Sorted by id, so `get` is a binary search: a map by id would cost ≈ 33 bytes an
    /// endpoint more.
    endpoints: Vec<Arc<ActiveEndpoint>>,
    untenanted: TopicTrie<usize>,
    by_tenant: HashMap<Box<str>, TopicTrie<usize>>,
}

impl Snapshot {
    pub fn build(list: Vec<ActiveEndpoint>) -> Self {
        // Not `collect()`: collecting in place would keep `list`'s buffer (an
        // endpoint per slot) for the much smaller `Arc`s.
        let mut shared = Vec::with_capacity(list.len());
        shared.extend(list.into_iter().map(Arc::new));
        Self::from_shared(shared)
    }

    /// Builds the indexes over endpoints already shared with an earlier snapshot.
    fn from_shared(mut endpoints: Vec<Arc<ActiveEndpoint>>) -> Self {
        endpoints.sort_unstable_by_key(|e| e.id);
        let mut untenanted = TopicTrie::new();
        let mut by_tenant: HashMap<Box<str>, TopicTrie<usize>> = HashMap::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let trie = match &endpoint.tenant_id {
                None => &mut untenanted,
                Some(tenant) => by_tenant.entry(tenant.clone()).or_default(),
            };
            for pattern in &endpoint.event_types {
                trie.insert(pattern, index);
            }
        }
        Self {
            endpoints,
            untenanted,
            by_tenant,
        }
    }

    /// The endpoints subscribed to this event type and tenant.
    pub fn matching(&self, event_type: &str, tenant: Option<&str>) -> Vec<&Arc<ActiveEndpoint>> {
        let mut indices = self.untenanted.matches(event_type);
        if let Some(trie) = tenant.and_then(|t| self.by_tenant.get(t)) {
            indices.extend(trie.matches(event_type));
        }
        indices.into_iter().map(|i| &self.endpoints[i]).collect()
    }

    /// The endpoints that receive this event: subscribed to its type and tenant, and
    /// accepted by their payload filter if they have one. Endpoints without a filter
    /// cost nothing more than [`Snapshot::matching`]; the event's data is parsed once,
    /// when the first filter reads it.
    pub fn receiving(&self, event: &Subject<'_>) -> Receivers<'_> {
        let mut endpoints = self.matching(event.event_type(), event.tenant_id());
        let matched = endpoints.len();
        endpoints.retain(|e| e.filter.as_ref().is_none_or(|f| f.matches(event)));
        Receivers {
            filtered_out: matched - endpoints.len(),
            endpoints,
        }
    }

    pub fn get(&self, id: &Uuid) -> Option<&Arc<ActiveEndpoint>> {
        self.endpoints
            .binary_search_by_key(id, |e| e.id)
            .ok()
            .map(|i| &self.endpoints[i])
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// The endpoints an event goes to ([`Snapshot::receiving`]).
pub struct Receivers<'s> {
    pub endpoints: Vec<&'s Arc<ActiveEndpoint>>,
    /// Subscribed to its type and tenant, but refused by their payload filter.
    pub filtered_out: usize,
}

/// The shared cache; cheap to read from any task.
pub struct Subscriptions {
    pool: PgPool,
    /// Opens the stored secrets of the endpoints loaded: once per load, never per
    /// delivery.
    keys: Arc<Keyring>,
    current: RwLock<Arc<Snapshot>>,
    /// Taken by every load, so two never run at once (at start the ingest role and the
    /// change listener both ask for one); holds when the last full load started.
    loads: tokio::sync::Mutex<Option<Instant>>,
}

/// What became of an endpoint a delivery task names.
pub enum Lookup {
    Active(Arc<ActiveEndpoint>),
    Disabled(Option<String>),
    Deleted,
}

impl Subscriptions {
    /// An empty cache; `reload` fills it.
    pub fn new(pool: PgPool, keys: Arc<Keyring>) -> Arc<Self> {
        Arc::new(Self {
            pool,
            keys,
            current: RwLock::new(Arc::new(Snapshot::default())),
            loads: tokio::sync::Mutex::new(None),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("lock not poisoned").clone()
    }

    /// Loads every active endpoint. A load that started after this call was made has
    /// seen every change before it, so a call that waited for one returns at once.
    /// Endpoints that did not change keep the copy already shared, so a reload of
    /// 100,000 unchanged endpoints allocates little more than its index.
    pub async fn reload(&self) -> Result<usize, sqlx::Error> {
        let asked = Instant::now();
        let mut last = self.loads.lock().await;
        if last.is_some_and(|started| started >= asked) {
            return Ok(self.snapshot().len());
        }
        let started = Instant::now();
        let current = self.snapshot();
        let mut list = Vec::with_capacity(current.len());
        endpoints::for_each_active(&self.pool, &self.keys, |endpoint| {
            list.push(match current.get(&endpoint.id) {
                Some(known) if **known == endpoint => known.clone(),
                _ => Arc::new(endpoint),
            });
        })
        .await?;
        drop(current);
        let snapshot = Arc::new(Snapshot::from_shared(list));
        let count = snapshot.len();
        *self.current.write().expect("lock not poisoned") = snapshot;
        *last = Some(started);
        tracing::debug!(endpoints = count, "subscription cache reloaded");
        Ok(count)
    }

    /// Reloads only the given endpoints (changed, added, disabled or deleted), keeping
    /// the others as they are: a change costs one query and an index rebuild, not a
    /// reload of every endpoint.
    pub async fn refresh(&self, ids: &HashSet<Uuid>) -> Result<(), sqlx::Error> {
        let _load = self.loads.lock().await;
        let wanted: Vec<Uuid> = ids.iter().copied().collect();
        let fresh = endpoints::get_active(&self.pool, &self.keys, &wanted).await?;
        let current = self.snapshot();
        let mut list: Vec<Arc<ActiveEndpoint>> = current
            .endpoints
            .iter()
            .filter(|e| !ids.contains(&e.id))
            .cloned()
            .collect();
        list.extend(fresh.into_iter().map(Arc::new));
        let snapshot = Arc::new(Snapshot::from_shared(list));
        tracing::debug!(
            changed = ids.len(),
            endpoints = snapshot.len(),
            "subscriptions refreshed"
        );
        *self.current.write().expect("lock not poisoned") = snapshot;
        Ok(())
    }

    /// Loads the cache, retrying while the database is away; `false` if shutdown came
    /// first.
    pub async fn wait_loaded(&self, shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.reload().await {
                Ok(count) => {
                    tracing::info!(endpoints = count, "subscriptions loaded");
                    return true;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff.next_delay(),
                        "cannot load subscriptions; waiting for the database");
                    if !backoff.wait(shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    /// The endpoint of a delivery task. A miss (created a moment ago in another
    /// process, or disabled/deleted) is settled by one query.
    pub async fn lookup(&self, id: Uuid) -> Result<Lookup, sqlx::Error> {
        if let Some(endpoint) = self.snapshot().get(&id) {
            return Ok(Lookup::Active(endpoint.clone()));
        }
        if let Some(active) = endpoints::get_active(&self.pool, &self.keys, &[id])
            .await?
            .pop()
        {
            return Ok(Lookup::Active(Arc::new(active)));
        }
        // Not active, or its row cannot be used (logged): say which.
        Ok(match endpoints::get(&self.pool, None, id).await? {
            Some(e) if !e.deleted && !e.enabled => Lookup::Disabled(e.disabled_reason),
            _ => Lookup::Deleted,
        })
    }

    /// Keeps the cache fresh until shutdown: LISTEN for changes, reload on each (a
    /// burst of changes costs one reload), reconnect with backoff when the database
    /// goes away, and reload every minute regardless.
    pub async fn keep_fresh(self: Arc<Self>, shutdown: CancellationToken) {
        let reconnect = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut backoff = reconnect.clone();
        while !shutdown.is_cancelled() {
            let mut listener = match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => l,
                    Err(error) => {
                        tracing::warn!(%error, "cannot LISTEN for endpoint changes");
                        backoff.wait(&shutdown).await;
                        continue;
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "database unreachable; subscription cache may be stale");
                    backoff.wait(&shutdown).await;
                    continue;
                }
            };
            backoff = reconnect.clone();
            // Changes made while we were not listening.
            if let Err(error) = self.reload().await {
                tracing::warn!(%error, "subscription reload failed");
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SAFETY_RELOAD) => {
                        if let Err(error) = self.reload().await {
                            tracing::warn!(%error, "subscription reload failed");
                        }
                    }
                    note = listener.recv() => match note {
                        Ok(first) => {
                            // A burst of notifications is handled at once: the changed
                            // endpoints alone, or everything when there are many.
                            let mut ids = HashSet::new();
                            let mut everything = false;
                            let buffered = std::iter::from_fn(|| listener.next_buffered());
                            for note in std::iter::once(first).chain(buffered) {
                                match note.payload().parse::<Uuid>() {
                                    Ok(id) => {
                                        ids.insert(id);
                                    }
                                    Err(_) => everything = true,
                                }
                            }
                            let result = if everything || ids.len() > INCREMENTAL_LIMIT {
                                self.reload().await.map(|_| ())
                            } else {
                                self.refresh(&ids).await
                            };
                            if let Err(error) = result {
                                tracing::warn!(%error, "subscription reload failed");
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "endpoint change listener lost; reconnecting");
                            break;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SignatureScheme, Signing};

    fn endpoint(patterns: &[&str], tenant: Option<&str>) -> ActiveEndpoint {
        ActiveEndpoint {
            id: Uuid::new_v4(),
            url: "https://example.com/hook".parse().unwrap(),
            tenant_id: tenant.map(Into::into),
            event_types: patterns.iter().map(|p| p.parse().unwrap()).collect(),
            signing: Signing::generate(SignatureScheme::Standard),
            headers: Default::default(),
            rate_limit: None,
            filter: None,
            delivery: None,
            ordering: false,
        }
    }

    #[test]
    fn an_event_matches_its_tenants_endpoints_and_the_untenanted_ones_each_once() {
        let list = vec![
            endpoint(&["sales.#", "sales.order.*"], None),
            endpoint(&["sales.order.created"], Some("acme")),
            endpoint(&["sales.#"], Some("globex")),
            endpoint(&["billing.#"], Some("acme")),
        ];
        let ids: Vec<Uuid> = list.iter().map(|e| e.id).collect();
        let snapshot = Snapshot::build(list);
        let matched = |tenant| -> Vec<Uuid> {
            let mut m: Vec<Uuid> = snapshot
                .matching("sales.order.created", tenant)
                .iter()
                .map(|e| e.id)
                .collect();
            m.sort();
            m
        };
        let mut acme = vec![ids[0], ids[1]];
        acme.sort();
        assert_eq!(matched(Some("acme")), acme);
        let mut globex = vec![ids[0], ids[2]];
        globex.sort();
        assert_eq!(matched(Some("globex")), globex);
        assert_eq!(matched(None), vec![ids[0]]);
        assert_eq!(matched(Some("initech")), vec![ids[0]]);
    }

    #[test]
    fn an_endpoint_with_a_filter_receives_only_the_events_it_accepts() {
        let plain = endpoint(&["sales.#"], None);
        let mut filtered = endpoint(&["sales.#"], None);
        let filter = serde_json::json!({"data.amount": {"$gte": 1000}});
        filtered.filter = Some(Box::new(
            crate::domain::PayloadFilter::parse(filter).unwrap(),
        ));
        let (plain_id, filtered_id) = (plain.id, filtered.id);
        let snapshot = Snapshot::build(vec![plain, filtered]);
        let receiving = |data: &str| -> Vec<Uuid> {
            let data = serde_json::value::RawValue::from_string(data.into()).unwrap();
            let event = Subject::new("evt-1", "sales.order.created", None, &data);
            let receivers = snapshot.receiving(&event);
            let mut ids: Vec<Uuid> = receivers.endpoints.iter().map(|e| e.id).collect();
            ids.sort();
            assert_eq!(receivers.filtered_out, 2 - ids.len());
            ids
        };
        let mut both = vec![plain_id, filtered_id];
        both.sort();
        assert_eq!(receiving(r#"{"amount": 1500}"#), both);
        assert_eq!(receiving(r#"{"amount": 10}"#), vec![plain_id]);
        assert_eq!(receiving(r#"{"amount": "1500"}"#), vec![plain_id]);
    }

    #[test]
    fn without_filters_the_data_is_never_parsed() {
        let snapshot = Snapshot::build(vec![endpoint(&["sales.#"], None)]);
        let data = serde_json::value::RawValue::from_string("{}".into()).unwrap();
        let event = Subject::new("evt-1", "sales.order.created", None, &data);
        assert_eq!(snapshot.receiving(&event).endpoints.len(), 1);
        assert!(!event.data_parsed());
    }

    #[test]
    fn every_endpoint_is_found_by_its_id_and_no_other() {
        let list: Vec<ActiveEndpoint> = (0..500)
            .map(|i| endpoint(&["sales.#"], (i % 3 == 0).then_some("acme")))
            .collect();
        let ids: Vec<Uuid> = list.iter().map(|e| e.id).collect();
        let snapshot = Snapshot::build(list);
        for id in &ids {
            assert_eq!(snapshot.get(id).map(|e| e.id), Some(*id));
        }
        assert!(snapshot.get(&Uuid::new_v4()).is_none());
        assert_eq!(
            snapshot.matching("sales.order.created", Some("acme")).len(),
            500
        );
        assert_eq!(snapshot.matching("sales.order.created", None).len(), 333);
    }
}
