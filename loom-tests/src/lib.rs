//! loom models of sync-kit (see tests/).
