//! MQTT uplink to the serial registry.
