//! Delivery: the task format, retry schedule, HTTP client, outcome recorder and the
//! worker that ties them together.

pub mod client;
pub mod put_off;
pub mod recorder;
pub mod retry;
pub mod task;
pub mod throttle;
pub mod worker;
