//! Helpers shared by the end-to-end tests: locating the binary, temporary data dirs, child processes.
