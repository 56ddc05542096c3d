//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden from the docs). They reach
//! crate-private pieces (framer, parser) that the public API only exercises indirectly.
