//! Folds a player's raw input (keyboard, gamepad, touch pad) into a simple digital pad,
//! which is what most games want.

use cloudplay_proto::input::{GamepadState, InputEvent, gamepad_button, key};

use crate::StateError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
    Left,
    Right,
}

impl Direction {
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
            Direction::Left => Direction::Right,
            Direction::Right => Direction::Left,
        }
    }

    pub fn delta(self) -> (i32, i32) {
        match self {
            Direction::Up => (0, -1),
            Direction::Down => (0, 1),
            Direction::Left => (-1, 0),
            Direction::Right => (1, 0),
        }
    }

    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Option<Direction> {
        [Direction::Up, Direction::Down, Direction::Left, Direction::Right].get(value as usize).copied()
    }
}

/// The digital pad of one player, fed by every input device the player uses.
#[derive(Debug, Clone, Default)]
pub struct PadControls {
    /// Direction presses in the order they happened since the game last took them.
    presses: Vec<Direction>,
    /// Whether the action button (Space, Enter, gamepad South) is held.
    pub action_held: bool,
    /// Set by any press; games use it to let a player join.
    pub pressed_anything: bool,
    last_pad_direction: Option<Direction>,
}

const STICK_THRESHOLD: i16 = 16_000;

impl PadControls {
    /// Applies one raw input event.
    pub fn apply(&mut self, event: &InputEvent) {
        match *event {
            InputEvent::Key { usage, down, repeat } => {
                if repeat {
                    return;
                }
                let direction = match usage {
                    key::W | key::ARROW_UP => Some(Direction::Up),
                    key::S | key::ARROW_DOWN => Some(Direction::Down),
                    key::A | key::ARROW_LEFT => Some(Direction::Left),
                    key::D | key::ARROW_RIGHT => Some(Direction::Right),
                    _ => None,
                };
                if usage == key::SPACE || usage == key::ENTER {
                    self.action_held = down;
                }
                if down {
                    self.pressed_anything = true;
                    if let Some(direction) = direction {
                        self.push(direction);
                    }
                }
            }
            InputEvent::Gamepad(pad) => self.apply_gamepad(&pad),
            InputEvent::MouseButton { down: true, .. } | InputEvent::Touch { .. } => {
                self.pressed_anything = true;
            }
            _ => {}
        }
    }

    fn apply_gamepad(&mut self, pad: &GamepadState) {
        let action = pad.pressed(gamepad_button::SOUTH) || pad.right_trigger > 128;
        if action || pad.pressed(gamepad_button::START) {
            self.pressed_anything = true;
        }
        self.action_held = action;
        let axes = pad.axes();
        let (x, y) = (axes.first().copied().unwrap_or(0), axes.get(1).copied().unwrap_or(0));
        let direction = if pad.pressed(gamepad_button::DPAD_UP) || y < -STICK_THRESHOLD {
            Some(Direction::Up)
        } else if pad.pressed(gamepad_button::DPAD_DOWN) || y > STICK_THRESHOLD {
            Some(Direction::Down)
        } else if pad.pressed(gamepad_button::DPAD_LEFT) || x < -STICK_THRESHOLD {
            Some(Direction::Left)
        } else if pad.pressed(gamepad_button::DPAD_RIGHT) || x > STICK_THRESHOLD {
            Some(Direction::Right)
        } else {
            None
        };
        // Snapshots repeat while a direction is held: only a change is a press.
        if direction != self.last_pad_direction {
            if let Some(direction) = direction {
                self.pressed_anything = true;
                self.push(direction);
            }
            self.last_pad_direction = direction;
        }
    }

    fn push(&mut self, direction: Direction) {
        // Two buffered turns are enough for a quick double turn; more would feel laggy.
        if self.presses.len() < 2 {
            self.presses.push(direction);
        }
    }

    /// Takes the oldest buffered direction press.
    pub fn take_press(&mut self) -> Option<Direction> {
        (!self.presses.is_empty()).then(|| self.presses.remove(0))
    }

    /// Appends the controls to a saved game state (5 bytes).
    pub(crate) fn save(&self, out: &mut Vec<u8>) {
        let direction = |d: Option<&Direction>| d.map_or(0xFF, |d| d.to_u8());
        out.push(self.presses.len() as u8);
        out.extend_from_slice(&[direction(self.presses.first()), direction(self.presses.get(1))]);
        out.push(self.action_held as u8);
        out.push(direction(self.last_pad_direction.as_ref()));
    }

    /// Reads controls written by [`PadControls::save`].
    pub(crate) fn load(next: &mut dyn FnMut() -> Result<u8, StateError>) -> Result<PadControls, StateError> {
        let count = next()? as usize;
        let first = Direction::from_u8(next()?);
        let second = Direction::from_u8(next()?);
        let action_held = next()? != 0;
        let last_pad_direction = Direction::from_u8(next()?);
        let presses: Vec<Direction> = [first, second].into_iter().flatten().collect();
        if presses.len() != count {
            return Err(StateError::Corrupt);
        }
        Ok(PadControls { presses, action_held, pressed_anything: false, last_pad_direction })
    }

    /// Forgets buffered presses (at the start of a round).
    pub fn clear_presses(&mut self) {
        self.presses.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudplay_proto::input::MAX_GAMEPAD_AXES;

    fn pad(buttons: u32, x: i16) -> InputEvent {
        let mut axes = [0; MAX_GAMEPAD_AXES];
        axes[0] = x;
        InputEvent::Gamepad(GamepadState {
            pad: 0,
            connected: true,
            buttons,
            left_trigger: 0,
            right_trigger: 0,
            axis_count: 2,
            axes,
        })
    }

    #[test]
    fn keys_and_pads_become_direction_presses() {
        let mut controls = PadControls::default();
        controls.apply(&InputEvent::Key { usage: key::ARROW_LEFT, down: true, repeat: false });
        controls.apply(&InputEvent::Key { usage: key::ARROW_LEFT, down: true, repeat: true });
        assert_eq!(controls.take_press(), Some(Direction::Left));
        assert_eq!(controls.take_press(), None);

        controls.apply(&pad(0, 30_000));
        controls.apply(&pad(0, 30_000)); // still held: not a new press
        controls.apply(&pad(1 << gamepad_button::DPAD_UP, 0));
        assert_eq!(controls.take_press(), Some(Direction::Right));
        assert_eq!(controls.take_press(), Some(Direction::Up));
        assert!(controls.pressed_anything);
    }
}
