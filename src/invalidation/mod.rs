//! Invalidation that does not come through the API: the Postgres outbox, which turns committed row changes into
//! cache invalidations with no application code involved.

pub mod outbox;
