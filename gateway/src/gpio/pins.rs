//! The seam between the door logic and any pin: embedded-hal 1.0
//! `InputPin`/`OutputPin`, seen through their *logical* level.
//!
//! embedded-hal's `High`/`Low` is the voltage on the pin. What tracegate
//! cares about is whether an input is *active* (beam broken) and whether a
//! lamp should be *on*; wiring decides which voltage that is (an opto-
//! coupler pulls a photo-eye input low, many relay boards switch on low).
//! [`Logical`] maps one to the other with the pin's `active_low`, in one
//! place, so no caller ever compares a raw level.

use embedded_hal::digital::{Error as _, ErrorKind, InputPin, OutputPin};

/// A pin operation failed; says which pin and what the backend reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pin {pin}: {kind:?}: {detail}")]
pub struct PinError {
    pub pin: String,
    pub kind: ErrorKind,
    pub detail: String,
}

/// A pin with its `active_low` applied.
#[derive(Debug)]
pub struct Logical<P> {
    pub name: String,
    pub pin: P,
    pub active_low: bool,
}

impl<P: embedded_hal::digital::ErrorType> Logical<P>
where
    P::Error: std::fmt::Debug,
{
    fn err(&self, e: P::Error) -> PinError {
        PinError {
            pin: self.name.clone(),
            kind: e.kind(),
            detail: format!("{e:?}"),
        }
    }
}

/// An output as the signal task drives it.
pub trait Output: Send + std::fmt::Debug {
    fn name(&self) -> &str;
    fn set_active(&mut self, on: bool) -> Result<(), PinError>;
}

/// An input as the GPIO task reads its level at start.
pub trait Input: Send + std::fmt::Debug {
    fn name(&self) -> &str;
    fn is_active(&mut self) -> Result<bool, PinError>;
}

impl<P> Output for Logical<P>
where
    P: OutputPin + Send + std::fmt::Debug,
    P::Error: std::fmt::Debug,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn set_active(&mut self, on: bool) -> Result<(), PinError> {
        let high = on != self.active_low;
        let r = if high {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        };
        r.map_err(|e| self.err(e))
    }
}

impl<P> Input for Logical<P>
where
    P: InputPin + Send + std::fmt::Debug,
    P::Error: std::fmt::Debug,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn is_active(&mut self) -> Result<bool, PinError> {
        let high = match self.pin.is_high() {
            Ok(h) => h,
            Err(e) => return Err(self.err(e)),
        };
        Ok(high != self.active_low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// An in-repo fake pin: records every level written, reads a set level.
    #[derive(Debug, Default)]
    struct Fake {
        high: bool,
        written: Vec<bool>,
    }
    impl embedded_hal::digital::ErrorType for Fake {
        type Error = Infallible;
    }
    impl OutputPin for Fake {
        fn set_low(&mut self) -> Result<(), Infallible> {
            self.written.push(false);
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            self.written.push(true);
            Ok(())
        }
    }
    impl InputPin for Fake {
        fn is_high(&mut self) -> Result<bool, Infallible> {
            Ok(self.high)
        }
        fn is_low(&mut self) -> Result<bool, Infallible> {
            Ok(!self.high)
        }
    }

    #[test]
    fn an_active_low_output_drives_low_for_on_and_an_active_low_input_reads_low_as_active() {
        let mut out = Logical {
            name: "relay".into(),
            pin: Fake::default(),
            active_low: true,
        };
        out.set_active(true).unwrap();
        out.set_active(false).unwrap();
        assert_eq!(out.pin.written, [false, true]);
        let mut eye = Logical {
            name: "eye".into(),
            pin: Fake {
                high: false,
                written: vec![],
            },
            active_low: true,
        };
        assert!(eye.is_active().unwrap(), "opto pulls low: beam broken");
        eye.active_low = false;
        assert!(!eye.is_active().unwrap());
    }
}
