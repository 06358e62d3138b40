//! Lock-free columnar experience store.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
