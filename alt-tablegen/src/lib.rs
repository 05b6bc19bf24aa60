//! alt-tablegen: build-time table generator and inspector for alt.
