//! Read-only consistency check (placeholder, filled in below).
