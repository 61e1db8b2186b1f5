//! Helpers for labimg boot tests: network namespaces, QEMU, serial logs.
