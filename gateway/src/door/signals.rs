//! Stack-light and buzzer rules, sans-IO: what happened in, the level each
//! output should have out. Time comes in with every call.
//!
//! Each read point with a stack light has [`LightRules`]: which outputs
//! show green, amber and red, and for how long. The rules:
//! - a `pass` with tags and no flag: green for `green_ms`;
//! - any event with a flag, or a pass with no tags (a load that carried
//!   nothing readable): red for `red_ms` (put the buzzer in the red list);
//! - while a reader is down or the outbox is older than its threshold
//!   (the *attention* condition, gateway-wide): amber, steady.
//!
//! "Flagged" is read from the event's own flags list, so a flag kind added
//! later drives red without a change here; `ignore_flags` names any that
//! should not. When rules overlap the highest wins: red over amber over
//! green, and only the winner's outputs are on (a light never shows red
//! and green together). A later red or green extends its time. A lamp test
//! turns every output on for its duration; shutdown turns every output off
//! and keeps it off.

use crate::event::Flag;

/// One stack light: output indices per level, and how long each shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LightRules {
    pub green: Vec<usize>,
    pub green_ms: u64,
    pub amber: Vec<usize>,
    pub red: Vec<usize>,
    pub red_ms: u64,
}

/// What a light shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Green,
    Amber,
    Red,
    LampTest,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Green => "green",
            Level::Amber => "amber",
            Level::Red => "red",
            Level::LampTest => "lamp test",
        }
    }
}

/// Something that happened at a light's read point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Happening<'a> {
    pub light: usize,
    /// Whether it is a `pass` (only passes turn the light green).
    pub pass: bool,
    /// Tags in the pass (ignored for other events).
    pub tag_count: u64,
    pub flags: &'a [Flag],
}

#[derive(Debug, Clone)]
struct Light {
    rules: LightRules,
    red_until: u64,
    green_until: u64,
}

#[derive(Debug, Clone)]
pub struct Signals {
    lights: Vec<Light>,
    outputs: usize,
    ignore_flags: Vec<Flag>,
    attention: bool,
    lamp_test_until: u64,
    stopped: bool,
}

impl Signals {
    /// `outputs`: how many outputs exist (indices in the rules are below it).
    pub fn new(lights: Vec<LightRules>, outputs: usize, ignore_flags: Vec<Flag>) -> Self {
        Self {
            lights: lights
                .into_iter()
                .map(|rules| Light {
                    rules,
                    red_until: 0,
                    green_until: 0,
                })
                .collect(),
            outputs,
            ignore_flags,
            attention: false,
            lamp_test_until: 0,
            stopped: false,
        }
    }

    /// Whether `flags` holds a flag that turns the light red.
    pub fn flagged(&self, flags: &[Flag]) -> bool {
        flags.iter().any(|f| !self.ignore_flags.contains(f))
    }

    /// The level a happening asks for (before priorities), if any.
    pub fn wanted(&self, h: &Happening<'_>) -> Option<Level> {
        if self.flagged(h.flags) || (h.pass && h.tag_count == 0) {
            Some(Level::Red)
        } else if h.pass {
            Some(Level::Green)
        } else {
            None
        }
    }

    pub fn on_happening(&mut self, h: &Happening<'_>, now_ms: u64) {
        let wanted = self.wanted(h);
        let Some(light) = self.lights.get_mut(h.light) else {
            return;
        };
        match wanted {
            Some(Level::Red) => {
                light.red_until = light
                    .red_until
                    .max(now_ms.saturating_add(light.rules.red_ms))
            }
            Some(Level::Green) => {
                light.green_until = light
                    .green_until
                    .max(now_ms.saturating_add(light.rules.green_ms))
            }
            _ => {}
        }
    }

    /// Reader down or outbox too old (gateway-wide).
    pub fn set_attention(&mut self, on: bool) {
        self.attention = on;
    }

    pub fn lamp_test(&mut self, now_ms: u64, duration_ms: u64) {
        self.lamp_test_until = now_ms.saturating_add(duration_ms);
    }

    /// All outputs off from now on.
    pub fn shutdown(&mut self) {
        self.stopped = true;
    }

    pub fn level(&self, light: usize, now_ms: u64) -> Level {
        let Some(l) = self.lights.get(light) else {
            return Level::Off;
        };
        if self.stopped {
            Level::Off
        } else if now_ms < self.lamp_test_until {
            Level::LampTest
        } else if now_ms < l.red_until {
            Level::Red
        } else if self.attention && !l.rules.amber.is_empty() {
            Level::Amber
        } else if now_ms < l.green_until {
            Level::Green
        } else {
            Level::Off
        }
    }

    /// The level every output should have at `now_ms` (`true`: active).
    pub fn outputs(&self, now_ms: u64) -> Vec<bool> {
        let mut out = vec![false; self.outputs];
        if self.stopped {
            return out;
        }
        if now_ms < self.lamp_test_until {
            out.iter_mut().for_each(|o| *o = true);
            return out;
        }
        for (i, l) in self.lights.iter().enumerate() {
            let on: &[usize] = match self.level(i, now_ms) {
                Level::Red => &l.rules.red,
                Level::Amber => &l.rules.amber,
                Level::Green => &l.rules.green,
                Level::Off | Level::LampTest => &[],
            };
            for &o in on {
                if let Some(slot) = out.get_mut(o) {
                    *slot = true;
                }
            }
        }
        out
    }

    /// The next moment the outputs change without a new happening.
    pub fn deadline_ms(&self, now_ms: u64) -> Option<u64> {
        if self.stopped {
            return None;
        }
        std::iter::once(self.lamp_test_until)
            .chain(
                self.lights
                    .iter()
                    .flat_map(|l| [l.red_until, l.green_until]),
            )
            .filter(|&t| t > now_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Outputs: 0 green, 1 amber, 2 red, 3 buzzer.
    fn signals() -> Signals {
        Signals::new(
            vec![LightRules {
                green: vec![0],
                green_ms: 2_000,
                amber: vec![1],
                red: vec![2, 3],
                red_ms: 3_000,
            }],
            4,
            Vec::new(),
        )
    }

    fn pass(tags: u64, flags: &[Flag]) -> Happening<'_> {
        Happening {
            light: 0,
            pass: true,
            tag_count: tags,
            flags,
        }
    }

    #[test]
    fn a_clean_pass_is_green_for_its_time_then_off() {
        let mut s = signals();
        s.on_happening(&pass(24, &[]), 1_000);
        assert_eq!(s.outputs(1_000), [true, false, false, false]);
        assert_eq!(s.outputs(2_999), [true, false, false, false]);
        assert_eq!(s.deadline_ms(1_000), Some(3_000));
        assert_eq!(s.outputs(3_000), [false; 4]);
    }

    #[test]
    fn a_flagged_pass_or_event_is_red_and_buzzer_over_green() {
        let mut s = signals();
        s.on_happening(&pass(24, &[]), 0);
        s.on_happening(
            &Happening {
                light: 0,
                pass: false,
                tag_count: 0,
                flags: &[Flag::ForgedNfc],
            },
            500,
        );
        assert_eq!(s.level(0, 600), Level::Red);
        assert_eq!(
            s.outputs(600),
            [false, false, true, true],
            "never red and green together"
        );
        assert_eq!(s.outputs(3_499), [false, false, true, true]);
        assert_eq!(s.outputs(3_500), [false; 4], "green ran out under red");
    }

    #[test]
    fn red_beats_amber_beats_green() {
        let mut s = signals();
        s.set_attention(true);
        assert_eq!(s.level(0, 0), Level::Amber);
        s.on_happening(&pass(3, &[]), 0);
        assert_eq!(
            s.outputs(10),
            [false, true, false, false],
            "amber over green"
        );
        s.on_happening(&pass(3, &[Flag::Unexpected]), 10);
        assert_eq!(s.outputs(20), [false, false, true, true], "red over amber");
        assert_eq!(
            s.level(0, 3_010),
            Level::Amber,
            "amber stays while the condition does"
        );
        s.set_attention(false);
        assert_eq!(s.level(0, 3_010), Level::Off);
    }

    #[test]
    fn an_empty_pass_is_red_and_a_plain_event_changes_nothing() {
        let mut s = signals();
        s.on_happening(&pass(0, &[]), 0);
        assert_eq!(s.level(0, 1), Level::Red);
        let mut s = signals();
        s.on_happening(
            &Happening {
                light: 0,
                pass: false,
                tag_count: 0,
                flags: &[],
            },
            0,
        );
        assert_eq!(s.level(0, 1), Level::Off);
    }

    #[test]
    fn any_flag_not_ignored_is_red_so_new_flag_kinds_need_no_rule() {
        let mut s = Signals::new(
            vec![LightRules {
                green: vec![0],
                green_ms: 1,
                red: vec![1],
                red_ms: 1,
                amber: vec![],
            }],
            2,
            vec![Flag::OverScanned],
        );
        assert!(!s.flagged(&[Flag::OverScanned]));
        for f in [
            Flag::Unknown,
            Flag::Unexpected,
            Flag::Cloned,
            Flag::ForgedNfc,
            Flag::ReplayedNfc,
        ] {
            assert!(s.flagged(&[f]), "{f:?}");
        }
        s.on_happening(&pass(1, &[Flag::OverScanned]), 0);
        assert_eq!(
            s.level(0, 0),
            Level::Green,
            "an ignored flag does not turn red"
        );
    }

    #[test]
    fn the_lamp_test_lights_everything_then_the_rules_resume() {
        let mut s = signals();
        s.set_attention(true);
        s.lamp_test(0, 1_000);
        assert_eq!(s.outputs(999), [true; 4]);
        assert_eq!(s.deadline_ms(0), Some(1_000));
        assert_eq!(s.outputs(1_000), [false, true, false, false]);
    }

    #[test]
    fn shutdown_turns_every_output_off_for_good() {
        let mut s = signals();
        s.lamp_test(0, 10_000);
        s.on_happening(&pass(0, &[]), 0);
        s.shutdown();
        assert_eq!(s.outputs(5), [false; 4]);
        s.on_happening(&pass(3, &[]), 10);
        assert_eq!(s.outputs(11), [false; 4]);
        assert_eq!(s.deadline_ms(11), None);
    }

    proptest! {
        /// Whatever happens, a light shows at most one level's outputs, and
        /// red whenever a flagged happening is younger than `red_ms`.
        #[test]
        fn one_level_at_a_time_and_red_for_every_recent_flag(
            steps in proptest::collection::vec((any::<bool>(), 0u64..5, any::<bool>(), 0u64..2_000), 0..60),
        ) {
            let mut s = signals();
            let mut now = 0;
            let mut last_red = None;
            for (flag, tags, attention, gap) in steps {
                now += gap;
                let flags: &[Flag] = if flag { &[Flag::Cloned] } else { &[] };
                s.set_attention(attention);
                s.on_happening(&pass(tags, flags), now);
                if flag || tags == 0 { last_red = Some(now); }
                let o = s.outputs(now);
                let lit = [o[0], o[1], o[2] || o[3]].iter().filter(|x| **x).count();
                prop_assert!(lit <= 1, "{o:?}");
                if last_red.is_some_and(|r| now < r + 3_000) {
                    prop_assert_eq!(o, vec![false, false, true, true]);
                }
            }
        }
    }
}
