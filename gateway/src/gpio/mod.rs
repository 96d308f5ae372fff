//! GPIO: photo-eyes in, stack lights and buzzers out, behind embedded-hal
//! 1.0 `InputPin`/`OutputPin`.

pub mod config;

pub use config::{DoorPoint, GpioConfig};
pub mod cdev;
pub mod pins;
pub mod sim;
pub mod task;

pub use task::{GpioError, SignalNotice};
