//! The GPIO character-device backend (`/dev/gpiochipN`), through
//! `gpiocdev`: uAPI v2 (bias, per-line config) with a v1 fallback on kernels
//! that only have v1. Each pin is one line request held for the life of the
//! daemon; a line another process holds, a missing chip or a permission
//! problem fails the start (and `check-config`) naming chip, line and why.
//!
//! Chips are found by label (`pinctrl-rp1` on a Pi 5, `pinctrl-bcm2711` on a
//! Pi 4), because the Pi 5 header chip moved from gpiochip4 to gpiochip0
//! between kernels; a path is used as given. The kernel applies
//! `active_low` (requested per line), so [`CdevLine`] reads and writes
//! logical levels and its `High` means *active*. Debounce is done in
//! tracegate (`door::debounce`) for every backend alike.

use std::path::PathBuf;

use gpiocdev::line::{EdgeDetection, Value};
use gpiocdev::request::Request;

use super::config::{Bias, ChipRef};

/// Why a pin could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("GPIO pin {pin:?} ({chip}, line {line}): {reason}")]
pub struct OpenError {
    pub pin: String,
    pub chip: String,
    pub line: u32,
    pub reason: String,
}

/// One requested line behind embedded-hal.
#[derive(Debug)]
pub struct CdevLine {
    pub request: Request,
    pub line: u32,
}

/// A failed line operation.
#[derive(Debug)]
pub struct CdevError(pub gpiocdev::Error);

impl embedded_hal::digital::Error for CdevError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl embedded_hal::digital::ErrorType for CdevLine {
    type Error = CdevError;
}

impl embedded_hal::digital::InputPin for CdevLine {
    fn is_high(&mut self) -> Result<bool, CdevError> {
        self.request
            .value(self.line)
            .map(|v| v == Value::Active)
            .map_err(CdevError)
    }
    fn is_low(&mut self) -> Result<bool, CdevError> {
        self.is_high().map(|h| !h)
    }
}

impl embedded_hal::digital::OutputPin for CdevLine {
    fn set_low(&mut self) -> Result<(), CdevError> {
        self.request
            .set_value(self.line, Value::Inactive)
            .map_err(CdevError)
    }
    fn set_high(&mut self) -> Result<(), CdevError> {
        self.request
            .set_value(self.line, Value::Active)
            .map_err(CdevError)
    }
}

/// The path of the chip `chip` names.
pub fn find_chip(chip: &ChipRef) -> Result<PathBuf, String> {
    match chip {
        ChipRef::Path(p) => Ok(p.clone()),
        ChipRef::Label(label) => {
            let paths = gpiocdev::chip::chips().map_err(|e| {
                format!("cannot list GPIO chips: {e} (is this a board with GPIO? /dev/gpiochip* missing)")
            })?;
            let mut seen = Vec::new();
            for p in paths {
                if let Ok(info) = gpiocdev::chip::Chip::from_path(&p).and_then(|c| c.info()) {
                    if info.label == *label {
                        return Ok(p);
                    }
                    seen.push(format!("{} [{}]", info.name, info.label));
                }
            }
            Err(format!(
                "no GPIO chip is labelled {label:?} (found: {})",
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            ))
        }
    }
}

fn reason(e: &gpiocdev::Error) -> String {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("permission") {
        format!("{text} (the service user needs the `gpio` group)")
    } else if lower.contains("busy") {
        format!("{text} (another process or a kernel driver holds the line)")
    } else {
        text
    }
}

/// What `check-config` and a reload can verify without taking the line
/// (the running daemon holds it): the chip is found and can be opened,
/// the line exists, and no other consumer holds it.
pub fn check(pin: &str, chip: &ChipRef, line: u32) -> Result<(), OpenError> {
    let fail = |reason: String| OpenError {
        pin: pin.to_owned(),
        chip: chip.to_string(),
        line,
        reason,
    };
    let path = find_chip(chip).map_err(fail)?;
    let c = gpiocdev::chip::Chip::from_path(&path).map_err(|e| fail(reason(&e)))?;
    let info = c.info().map_err(|e| fail(reason(&e)))?;
    if line >= info.num_lines {
        return Err(fail(format!(
            "{} [{}] has lines 0..{}",
            info.name, info.label, info.num_lines
        )));
    }
    let l = c.line_info(line).map_err(|e| fail(reason(&e)))?;
    if l.used && l.consumer != "tracegate" {
        return Err(fail(format!(
            "the line is held by {:?}",
            if l.consumer.is_empty() {
                "the kernel"
            } else {
                l.consumer.as_str()
            }
        )));
    }
    Ok(())
}

/// Requests an input line with edge detection on both edges.
pub fn open_input(
    pin: &str,
    chip: &ChipRef,
    line: u32,
    active_low: bool,
    bias: Bias,
) -> Result<CdevLine, OpenError> {
    let fail = |reason: String| OpenError {
        pin: pin.to_owned(),
        chip: chip.to_string(),
        line,
        reason,
    };
    let path = find_chip(chip).map_err(fail)?;
    let mut b = Request::builder();
    b.on_chip(&path)
        .with_consumer("tracegate")
        .with_line(line)
        .as_input()
        .with_edge_detection(EdgeDetection::BothEdges);
    if active_low {
        b.as_active_low();
    }
    match bias {
        Bias::AsIs => {}
        Bias::PullUp => {
            b.with_bias(gpiocdev::line::Bias::PullUp);
        }
        Bias::PullDown => {
            b.with_bias(gpiocdev::line::Bias::PullDown);
        }
        Bias::Disabled => {
            b.with_bias(gpiocdev::line::Bias::Disabled);
        }
    }
    let request = b.request().map_err(|e| fail(reason(&e)))?;
    Ok(CdevLine { request, line })
}

/// Requests an output line, inactive from the first moment (no lamp
/// flashes at start).
pub fn open_output(
    pin: &str,
    chip: &ChipRef,
    line: u32,
    active_low: bool,
) -> Result<CdevLine, OpenError> {
    let fail = |reason: String| OpenError {
        pin: pin.to_owned(),
        chip: chip.to_string(),
        line,
        reason,
    };
    let path = find_chip(chip).map_err(fail)?;
    let mut b = Request::builder();
    b.on_chip(&path)
        .with_consumer("tracegate")
        .with_line(line)
        .as_output(Value::Inactive);
    if active_low {
        b.as_active_low();
    }
    let request = b.request().map_err(|e| fail(reason(&e)))?;
    Ok(CdevLine { request, line })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_on_a_missing_chip_fails_naming_the_chip_the_line_and_why() {
        let chip = ChipRef::Path(PathBuf::from("/dev/gpiochip-does-not-exist"));
        let err = open_output("red", &chip, 24, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"red\""), "{err}");
        assert!(err.contains("/dev/gpiochip-does-not-exist"), "{err}");
        assert!(err.contains("line 24"), "{err}");
        let label = ChipRef::Label("pinctrl-nowhere".into());
        let err = open_input("eye", &label, 17, true, Bias::PullUp)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pinctrl-nowhere") && err.contains("line 17"),
            "{err}"
        );
    }

    #[test]
    fn check_config_names_the_chip_and_line_it_cannot_find() {
        let chip = ChipRef::Path(PathBuf::from("/dev/gpiochip-missing"));
        let err = check("green", &chip, 22).unwrap_err().to_string();
        assert!(
            err.contains("\"green\"")
                && err.contains("/dev/gpiochip-missing")
                && err.contains("line 22"),
            "{err}"
        );
    }
}
