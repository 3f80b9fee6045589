//! Keyset pagination: a page is `limit` rows after the key of the last row of the page
//! before, which the caller gets back as an opaque `next_cursor` (base64url of the key's
//! JSON). Rows inserted meanwhile never shift a page, and a page costs the same at any
//! depth.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ServiceError;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1_000;

/// A validated `limit` and `cursor`.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    limit: Option<i64>,
    cursor: Option<String>,
}

impl PageRequest {
    pub fn new(limit: Option<i64>, cursor: Option<String>) -> Result<Self, ServiceError> {
        if let Some(limit) = limit {
            if !(1..=MAX_LIMIT).contains(&limit) {
                return Err(ServiceError::invalid(
                    "limit",
                    format!("must be between 1 and {MAX_LIMIT}"),
                ));
            }
        }
        Ok(Self {
            limit,
            cursor: cursor.filter(|c| !c.is_empty()),
        })
    }

    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    /// Rows to fetch: one more than the page, to know whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit() + 1
    }

    /// The key after which this page starts; a cursor that is not one of ours is the
    /// caller's error.
    pub fn after<K: DeserializeOwned>(&self) -> Result<Option<K>, ServiceError> {
        let Some(cursor) = &self.cursor else {
            return Ok(None);
        };
        URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .map(Some)
            .ok_or_else(|| ServiceError::invalid("cursor", "not a cursor of this list"))
    }
}

/// One page of a list, as the API answers it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Give it as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// `rows` as fetched with [`PageRequest::fetch`]; `key` gives a row's cursor key.
    pub fn of<K: Serialize>(
        mut rows: Vec<T>,
        request: &PageRequest,
        key: impl Fn(&T) -> K,
    ) -> Self {
        let limit = request.limit() as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| {
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&key(last)).expect("keys serialise"))
            })
        } else {
            None
        };
        Page {
            data: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            data: self.data.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_page_carries_the_cursor_of_its_last_row() {
        let request = PageRequest::new(Some(2), None).unwrap();
        let page = Page::of(vec![5, 4, 3], &request, |n| *n);
        assert_eq!(page.data, vec![5, 4]);
        let next = PageRequest::new(Some(2), page.next_cursor).unwrap();
        assert_eq!(next.after::<i32>().unwrap(), Some(4));
    }

    #[test]
    fn the_last_page_has_no_cursor() {
        let request = PageRequest::new(Some(3), None).unwrap();
        assert_eq!(Page::of(vec![1, 2, 3], &request, |n| *n).next_cursor, None);
    }

    #[test]
    fn limits_and_cursors_are_checked() {
        for bad in [0, -5, 1001] {
            assert!(matches!(
                PageRequest::new(Some(bad), None),
                Err(ServiceError::Invalid(_))
            ));
        }
        for bad in ["!!", "bm90IGpzb24", "%"] {
            let request = PageRequest::new(None, Some(bad.into())).unwrap();
            assert!(
                matches!(
                    request.after::<(String, i64)>(),
                    Err(ServiceError::Invalid(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(PageRequest::new(None, None).unwrap().limit(), DEFAULT_LIMIT);
    }
}
