//! Shared bits of the drs examples.
