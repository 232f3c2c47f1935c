//! The library half of the `levee` package: what the binary does that is worth testing and
//! fuzzing on its own. The command line itself is `cli.rs`, in the binary.

pub mod config_file;
