//! Server integration tests (filled in below).
