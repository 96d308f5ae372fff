//! Opening serial ports, and pseudo-terminal pairs for simulators.
