//! Operations: logging, metrics endpoint, systemd notify and watchdog.
