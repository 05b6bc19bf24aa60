//! Macros of **alt**.
