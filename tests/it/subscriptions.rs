//! The subscription cache against the real database: what a reload and a refresh of
//! some endpoints keep and what they take fresh.

use std::collections::HashSet;
use std::sync::Arc;

use herald::subscriptions::Subscriptions;

use crate::common::TestEnv;

#[tokio::test]
async fn a_reload_shares_unchanged_endpoints_and_takes_changed_ones_fresh() {
    let env = TestEnv::new().await;
    let same = env
        .add_endpoint("http://127.0.0.1:9/same", &["sales.#"], Some("acme"))
        .await;
    let changed = env
        .add_endpoint("http://127.0.0.1:9/before", &["billing.#"], None)
        .await;
    let gone = env
        .add_endpoint("http://127.0.0.1:9/gone", &["crm.#"], None)
        .await;

    let cache = Subscriptions::new(env.pool.clone(), std::sync::Arc::new(env.keys()));
    // Two loads asked for at once both answer with the full set.
    let (a, b) = tokio::join!(cache.reload(), cache.reload());
    assert_eq!((a.unwrap(), b.unwrap()), (3, 3));
    let before = cache.snapshot();

    // Changed behind Herald's back (no updated_at bump): the row itself is compared.
    sqlx::query("UPDATE herald.endpoints SET url = 'http://127.0.0.1:9/after' WHERE id = $1")
        .bind(changed.id)
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE herald.endpoints SET enabled = false WHERE id = $1")
        .bind(gone.id)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(cache.reload().await.unwrap(), 2);
    let after = cache.snapshot();

    assert!(
        Arc::ptr_eq(before.get(&same.id).unwrap(), after.get(&same.id).unwrap()),
        "an unchanged endpoint keeps the copy already shared"
    );
    let fresh = after.get(&changed.id).unwrap();
    assert!(!Arc::ptr_eq(before.get(&changed.id).unwrap(), fresh));
    assert_eq!(fresh.url.as_str(), "http://127.0.0.1:9/after");
    assert!(
        after.get(&gone.id).is_none(),
        "a disabled endpoint leaves the cache"
    );
    assert_eq!(after.matching("sales.order.created", Some("acme")).len(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_refresh_reloads_the_named_endpoints_alone() {
    let env = TestEnv::new().await;
    let changed = env
        .add_endpoint("http://127.0.0.1:9/before", &["billing.#"], None)
        .await;
    let untouched = env
        .add_endpoint("http://127.0.0.1:9/old", &["crm.#"], Some("acme"))
        .await;
    let deleted = env
        .add_endpoint("http://127.0.0.1:9/deleted", &["sales.#"], None)
        .await;
    let cache = Subscriptions::new(env.pool.clone(), std::sync::Arc::new(env.keys()));
    assert_eq!(cache.reload().await.unwrap(), 3);
    let before = cache.snapshot();

    let added = env
        .add_endpoint("http://127.0.0.1:9/added", &["sales.#"], Some("acme"))
        .await;
    for (sql, id) in [
        (
            "UPDATE herald.endpoints SET url = 'http://127.0.0.1:9/after' WHERE id = $1",
            changed.id,
        ),
        (
            "UPDATE herald.endpoints SET url = 'http://127.0.0.1:9/new' WHERE id = $1",
            untouched.id,
        ),
        (
            "UPDATE herald.endpoints SET deleted_at = now() WHERE id = $1",
            deleted.id,
        ),
    ] {
        sqlx::query(sql).bind(id).execute(&env.pool).await.unwrap();
    }
    let named = HashSet::from([changed.id, deleted.id, added.id]);
    cache.refresh(&named).await.unwrap();
    let after = cache.snapshot();

    assert_eq!(after.len(), 3);
    assert_eq!(
        after.get(&changed.id).unwrap().url.as_str(),
        "http://127.0.0.1:9/after"
    );
    assert!(
        after.get(&deleted.id).is_none(),
        "deleted: out of the cache"
    );
    assert_eq!(
        after.get(&added.id).unwrap().tenant_id.as_deref(),
        Some("acme")
    );
    assert!(
        Arc::ptr_eq(
            before.get(&untouched.id).unwrap(),
            after.get(&untouched.id).unwrap()
        ),
        "an endpoint not named keeps its copy until the next reload"
    );
    let mut acme: Vec<_> = after
        .matching("sales.order.created", Some("acme"))
        .iter()
        .map(|e| e.id)
        .collect();
    acme.sort();
    assert_eq!(acme, vec![added.id]);
    env.cleanup().await;
}
