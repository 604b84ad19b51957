//! Shared-memory data path (filled in by the frontend work).
