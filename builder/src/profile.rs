//! Profiles: the TOML files that describe a node image.
