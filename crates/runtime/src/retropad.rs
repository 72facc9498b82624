//! The libretro joypad ("RetroPad") of one player, fed by the browser's keyboard and
//! gamepad. Keys follow RetroArch's defaults, so players who know emulators feel at home:
//! arrows = D-pad, X = A, Z = B, S = X, A = Y, Q/W = L/R, Enter = Start, right Shift or
//! Backspace = Select. Gamepads use the W3C standard mapping by position (south = B,
//! east = A), as RetroArch does.

use cloudplay_proto::input::{GamepadState, InputEvent};

/// RetroPad button ids (`RETRO_DEVICE_ID_JOYPAD_*`).
pub mod button {
    pub const B: u32 = 0;
    pub const Y: u32 = 1;
    pub const SELECT: u32 = 2;
    pub const START: u32 = 3;
    pub const UP: u32 = 4;
    pub const DOWN: u32 = 5;
    pub const LEFT: u32 = 6;
    pub const RIGHT: u32 = 7;
    pub const A: u32 = 8;
    pub const X: u32 = 9;
    pub const L: u32 = 10;
    pub const R: u32 = 11;
    pub const L2: u32 = 12;
    pub const R2: u32 = 13;
    pub const L3: u32 = 14;
    pub const R3: u32 = 15;
}

/// Keyboard (HID usage) → RetroPad button.
const KEYS: [(u16, u32); 13] = [
    (0x52, button::UP),
    (0x51, button::DOWN),
    (0x50, button::LEFT),
    (0x4F, button::RIGHT),
    (0x1B, button::A),      // X
    (0x1D, button::B),      // Z
    (0x16, button::X),      // S
    (0x04, button::Y),      // A
    (0x14, button::L),      // Q
    (0x1A, button::R),      // W
    (0x28, button::START),  // Enter
    (0xE5, button::SELECT), // right Shift
    (0x2A, button::SELECT), // Backspace
];

/// W3C standard gamepad button index → RetroPad button.
const PAD_BUTTONS: [u32; 16] = [
    button::B,
    button::A,
    button::Y,
    button::X,
    button::L,
    button::R,
    button::L2,
    button::R2,
    button::SELECT,
    button::START,
    button::L3,
    button::R3,
    button::UP,
    button::DOWN,
    button::LEFT,
    button::RIGHT,
];

const STICK_THRESHOLD: i16 = 16_000;

/// One player's RetroPad: buttons held on the keyboard and on the gamepad, and the sticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetroPad {
    keys: u16,
    pad: u16,
    /// Left and right stick, x and y (`RETRO_DEVICE_ANALOG`, index 0 and 1).
    pub analog: [[i16; 2]; 2],
}

impl RetroPad {
    pub fn apply(&mut self, event: &InputEvent) {
        match *event {
            InputEvent::Key { usage, down, .. } => {
                for &(key, button) in KEYS.iter().filter(|(key, _)| *key == usage) {
                    let _ = key;
                    if down {
                        self.keys |= 1 << button;
                    } else {
                        self.keys &= !(1 << button);
                    }
                }
            }
            InputEvent::Gamepad(pad) => self.apply_gamepad(&pad),
            _ => {}
        }
    }

    fn apply_gamepad(&mut self, pad: &GamepadState) {
        if !pad.connected {
            self.pad = 0;
            self.analog = [[0; 2]; 2];
            return;
        }
        let mut bits = 0u16;
        for (index, &button) in PAD_BUTTONS.iter().enumerate() {
            if pad.pressed(index as u32) {
                bits |= 1 << button;
            }
        }
        let axis = |i: usize| pad.axes().get(i).copied().unwrap_or(0);
        let (x, y) = (axis(0), axis(1));
        for (held, button) in [
            (x < -STICK_THRESHOLD, button::LEFT),
            (x > STICK_THRESHOLD, button::RIGHT),
            (y < -STICK_THRESHOLD, button::UP),
            (y > STICK_THRESHOLD, button::DOWN),
        ] {
            if held {
                bits |= 1 << button;
            }
        }
        self.pad = bits;
        self.analog = [[x, y], [axis(2), axis(3)]];
    }

    /// Buttons held, bit `i` = RetroPad button `i`.
    pub fn buttons(&self) -> u16 {
        self.keys | self.pad
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudplay_proto::input::MAX_GAMEPAD_AXES;

    #[test]
    fn keyboard_and_gamepad_hold_buttons_together() {
        let mut pad = RetroPad::default();
        pad.apply(&InputEvent::Key { usage: 0x1B, down: true, repeat: false });
        assert_eq!(pad.buttons(), 1 << button::A);
        let mut axes = [0; MAX_GAMEPAD_AXES];
        axes[0] = -30_000;
        pad.apply(&InputEvent::Gamepad(GamepadState {
            pad: 0,
            connected: true,
            buttons: 1 << 9,
            left_trigger: 0,
            right_trigger: 0,
            axis_count: 2,
            axes,
        }));
        assert_eq!(pad.buttons(), 1 << button::A | 1 << button::START | 1 << button::LEFT);
        pad.apply(&InputEvent::Key { usage: 0x1B, down: false, repeat: false });
        assert_eq!(pad.buttons(), 1 << button::START | 1 << button::LEFT);
        assert_eq!(pad.analog[0], [-30_000, 0]);
    }
}
