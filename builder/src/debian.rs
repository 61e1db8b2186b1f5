//! Debian package source: verified InRelease, Packages, dependency closure, cache and .deb extraction.
