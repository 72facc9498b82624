//! The binary input protocol, version 1 (documented byte by byte in `docs/protocol.md`).
//!
//! Every message is `version:u8 | kind:u8 | seq:u32 LE | payload`. Integers are little
//! endian. A message never exceeds [`MAX_MESSAGE_LEN`] bytes; anything malformed is
//! rejected with an [`InputDecodeError`] and must be dropped by the receiver.

use thiserror::Error;

/// The protocol version this module speaks.
/// Players a session seats at once (each drives its own pad).
pub const MAX_PLAYERS: u8 = 4;
pub const INPUT_PROTOCOL_VERSION: u8 = 1;
/// Longest valid message (a gamepad snapshot with eight axes is 35 bytes).
pub const MAX_MESSAGE_LEN: usize = 64;
/// Most messages one datagram of the unreliable input channel carries.
pub const MAX_BUNDLE: usize = 8;
/// Most gamepads one peer may report.
pub const MAX_GAMEPADS: u8 = 4;
/// Most axes carried in one gamepad snapshot.
pub const MAX_GAMEPAD_AXES: usize = 8;

const HEADER_LEN: usize = 6;

mod kind {
    pub const KEY: u8 = 1;
    pub const MOUSE_MOVE: u8 = 2;
    pub const MOUSE_POSITION: u8 = 3;
    pub const MOUSE_BUTTON: u8 = 4;
    pub const MOUSE_WHEEL: u8 = 5;
    pub const GAMEPAD: u8 = 6;
    pub const TOUCH: u8 = 7;
}

/// One decoded input message: the sender's sequence number and what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputMessage {
    /// Increases by one per message sent by a peer; echoed in the probe strip.
    pub seq: u32,
    pub event: InputEvent,
}

/// Phase of a touch point, as in the DOM's touch events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchPhase {
    Start,
    Move,
    End,
    Cancel,
}

/// A snapshot of one gamepad in the W3C "standard" mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GamepadState {
    /// Pad index on the sending device, `0..MAX_GAMEPADS`.
    pub pad: u8,
    pub connected: bool,
    /// Bit `i` is standard button `i` (0 = A/cross … 16 = home).
    pub buttons: u32,
    /// Analog triggers, 0 = released, 255 = fully pressed.
    pub left_trigger: u8,
    pub right_trigger: u8,
    /// Number of valid entries in `axes`.
    pub axis_count: u8,
    /// Axes scaled to `i16` (-32767 = left/up, 32767 = right/down).
    pub axes: [i16; MAX_GAMEPAD_AXES],
}

impl GamepadState {
    pub fn axes(&self) -> &[i16] {
        &self.axes[..self.axis_count as usize]
    }

    pub fn pressed(&self, button: u32) -> bool {
        button < 32 && self.buttons & (1 << button) != 0
    }
}

/// Standard-mapping gamepad button indices used by the built-in games.
pub mod gamepad_button {
    pub const SOUTH: u32 = 0;
    pub const EAST: u32 = 1;
    pub const START: u32 = 9;
    pub const DPAD_UP: u32 = 12;
    pub const DPAD_DOWN: u32 = 13;
    pub const DPAD_LEFT: u32 = 14;
    pub const DPAD_RIGHT: u32 = 15;
}

/// USB HID keyboard usage ids (page 0x07) for the physical keys the built-in games use.
pub mod key {
    pub const A: u16 = 0x04;
    pub const D: u16 = 0x07;
    pub const S: u16 = 0x16;
    pub const W: u16 = 0x1A;
    pub const ENTER: u16 = 0x28;
    pub const ESCAPE: u16 = 0x29;
    pub const SPACE: u16 = 0x2C;
    pub const ARROW_RIGHT: u16 = 0x4F;
    pub const ARROW_LEFT: u16 = 0x50;
    pub const ARROW_DOWN: u16 = 0x51;
    pub const ARROW_UP: u16 = 0x52;
}

/// What happened on the player's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEvent {
    /// A physical key by USB HID usage id (page 0x07), independent of the keyboard layout.
    Key {
        usage: u16,
        down: bool,
        repeat: bool,
    },
    /// Relative mouse motion in device pixels (pointer lock).
    MouseMove {
        dx: i16,
        dy: i16,
    },
    /// Absolute pointer position, normalised to the video: 0 = left/top, 65535 = right/bottom.
    MousePosition {
        x: u16,
        y: u16,
    },
    /// Mouse button by DOM index (0 = main, 1 = middle, 2 = secondary, 3/4 = back/forward).
    MouseButton {
        button: u8,
        down: bool,
    },
    /// Wheel motion in lines; positive is right/down.
    MouseWheel {
        dx: i16,
        dy: i16,
    },
    Gamepad(GamepadState),
    /// A touch point, normalised like `MousePosition`.
    Touch {
        id: u8,
        phase: TouchPhase,
        x: u16,
        y: u16,
    },
}

/// Why a message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InputDecodeError {
    #[error("message of {0} bytes is longer than the {MAX_MESSAGE_LEN}-byte limit")]
    Oversized(usize),
    #[error("message is truncated")]
    Truncated,
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("message has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("field out of range: {0}")]
    OutOfRange(&'static str),
}

/// A bounds-checked little-endian reader over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], InputDecodeError> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(InputDecodeError::Truncated)?;
        self.bytes = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, InputDecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, InputDecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn i16(&mut self) -> Result<i16, InputDecodeError> {
        Ok(i16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, InputDecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn bool(&mut self) -> Result<bool, InputDecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(InputDecodeError::OutOfRange("boolean")),
        }
    }
}

impl InputMessage {
    /// Decodes one message from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<InputMessage, InputDecodeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(InputDecodeError::Oversized(bytes.len()));
        }
        let mut r = Reader { bytes };
        let message = InputMessage::read(&mut r)?;
        if !r.bytes.is_empty() {
            return Err(InputDecodeError::TrailingBytes(r.bytes.len()));
        }
        Ok(message)
    }

    /// Decodes a bundle: 1 to [`MAX_BUNDLE`] messages back to back, oldest first (the
    /// unreliable input channel repeats the latest messages in each datagram, so one lost
    /// datagram loses nothing). All or nothing: a bad message refuses the bundle.
    pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<InputMessage>, InputDecodeError> {
        if bytes.len() > MAX_MESSAGE_LEN * MAX_BUNDLE {
            return Err(InputDecodeError::Oversized(bytes.len()));
        }
        let mut r = Reader { bytes };
        let mut messages = Vec::new();
        while !r.bytes.is_empty() {
            if messages.len() == MAX_BUNDLE {
                return Err(InputDecodeError::Oversized(bytes.len()));
            }
            messages.push(InputMessage::read(&mut r)?);
        }
        if messages.is_empty() {
            return Err(InputDecodeError::Truncated);
        }
        Ok(messages)
    }

    fn read(r: &mut Reader) -> Result<InputMessage, InputDecodeError> {
        let version = r.u8()?;
        if version != INPUT_PROTOCOL_VERSION {
            return Err(InputDecodeError::Version(version));
        }
        let kind = r.u8()?;
        let seq = r.u32()?;
        let event = match kind {
            kind::KEY => {
                let usage = r.u16()?;
                let flags = r.u8()?;
                if flags & !0b11 != 0 {
                    return Err(InputDecodeError::OutOfRange("key flags"));
                }
                InputEvent::Key { usage, down: flags & 1 != 0, repeat: flags & 2 != 0 }
            }
            kind::MOUSE_MOVE => InputEvent::MouseMove { dx: r.i16()?, dy: r.i16()? },
            kind::MOUSE_POSITION => InputEvent::MousePosition { x: r.u16()?, y: r.u16()? },
            kind::MOUSE_BUTTON => InputEvent::MouseButton { button: r.u8()?, down: r.bool()? },
            kind::MOUSE_WHEEL => InputEvent::MouseWheel { dx: r.i16()?, dy: r.i16()? },
            kind::GAMEPAD => {
                let pad = r.u8()?;
                if pad >= MAX_GAMEPADS {
                    return Err(InputDecodeError::OutOfRange("gamepad index"));
                }
                let connected = r.bool()?;
                let buttons = r.u32()?;
                let left_trigger = r.u8()?;
                let right_trigger = r.u8()?;
                let axis_count = r.u8()?;
                if axis_count as usize > MAX_GAMEPAD_AXES {
                    return Err(InputDecodeError::OutOfRange("gamepad axis count"));
                }
                let mut axes = [0i16; MAX_GAMEPAD_AXES];
                for axis in axes.iter_mut().take(axis_count as usize) {
                    *axis = r.i16()?;
                }
                InputEvent::Gamepad(GamepadState {
                    pad,
                    connected,
                    buttons,
                    left_trigger,
                    right_trigger,
                    axis_count,
                    axes,
                })
            }
            kind::TOUCH => {
                let id = r.u8()?;
                let phase = match r.u8()? {
                    0 => TouchPhase::Start,
                    1 => TouchPhase::Move,
                    2 => TouchPhase::End,
                    3 => TouchPhase::Cancel,
                    _ => return Err(InputDecodeError::OutOfRange("touch phase")),
                };
                InputEvent::Touch { id, phase, x: r.u16()?, y: r.u16()? }
            }
            other => return Err(InputDecodeError::UnknownKind(other)),
        };
        Ok(InputMessage { seq, event })
    }

    /// Encodes the message (clients and tests use this; the host only decodes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 29);
        out.push(INPUT_PROTOCOL_VERSION);
        let (kind, payload_start) = (self.kind(), out.len());
        out.push(kind);
        out.extend_from_slice(&self.seq.to_le_bytes());
        debug_assert_eq!(out.len(), payload_start + 5);
        match self.event {
            InputEvent::Key { usage, down, repeat } => {
                out.extend_from_slice(&usage.to_le_bytes());
                out.push(down as u8 | (repeat as u8) << 1);
            }
            InputEvent::MouseMove { dx: a, dy: b } | InputEvent::MouseWheel { dx: a, dy: b } => {
                out.extend_from_slice(&a.to_le_bytes());
                out.extend_from_slice(&b.to_le_bytes());
            }
            InputEvent::MousePosition { x, y } => {
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
            }
            InputEvent::MouseButton { button, down } => out.extend_from_slice(&[button, down as u8]),
            InputEvent::Gamepad(pad) => {
                out.extend_from_slice(&[pad.pad, pad.connected as u8]);
                out.extend_from_slice(&pad.buttons.to_le_bytes());
                out.extend_from_slice(&[pad.left_trigger, pad.right_trigger, pad.axis_count]);
                for axis in pad.axes() {
                    out.extend_from_slice(&axis.to_le_bytes());
                }
            }
            InputEvent::Touch { id, phase, x, y } => {
                out.extend_from_slice(&[id, phase as u8]);
                out.extend_from_slice(&x.to_le_bytes());
                out.extend_from_slice(&y.to_le_bytes());
            }
        }
        out
    }

    fn kind(&self) -> u8 {
        match self.event {
            InputEvent::Key { .. } => kind::KEY,
            InputEvent::MouseMove { .. } => kind::MOUSE_MOVE,
            InputEvent::MousePosition { .. } => kind::MOUSE_POSITION,
            InputEvent::MouseButton { .. } => kind::MOUSE_BUTTON,
            InputEvent::MouseWheel { .. } => kind::MOUSE_WHEEL,
            InputEvent::Gamepad(_) => kind::GAMEPAD,
            InputEvent::Touch { .. } => kind::TOUCH,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_carry_several_messages_or_none() {
        let key = |seq, down| InputMessage {
            seq,
            event: InputEvent::Key { usage: key::SPACE, down, repeat: false },
        };
        let messages = [key(3, true), key(4, false), key(5, true)];
        let bytes: Vec<u8> = messages.iter().flat_map(|m| m.encode()).collect();
        assert_eq!(InputMessage::decode_bundle(&bytes).unwrap(), messages);
        assert_eq!(InputMessage::decode_bundle(&key(9, true).encode()).unwrap(), [key(9, true)]);
        assert!(InputMessage::decode_bundle(&bytes[..bytes.len() - 1]).is_err(), "a cut message refuses it");
        assert!(InputMessage::decode_bundle(&[]).is_err());
        let nine: Vec<u8> = (0..9).flat_map(|i| key(i, true).encode()).collect();
        assert!(InputMessage::decode_bundle(&nine).is_err(), "at most MAX_BUNDLE");
        assert!(InputMessage::decode(&bytes).is_err(), "a single message is one message");
    }

    fn samples() -> Vec<InputMessage> {
        let mut axes = [0i16; MAX_GAMEPAD_AXES];
        axes[..4].copy_from_slice(&[-32767, 0, 32767, 12]);
        let events = [
            InputEvent::Key { usage: key::ARROW_UP, down: true, repeat: false },
            InputEvent::Key { usage: key::W, down: false, repeat: true },
            InputEvent::MouseMove { dx: -5, dy: 300 },
            InputEvent::MousePosition { x: 0, y: 65535 },
            InputEvent::MouseButton { button: 2, down: true },
            InputEvent::MouseWheel { dx: 0, dy: -3 },
            InputEvent::Gamepad(GamepadState {
                pad: 3,
                connected: true,
                buttons: 1 << gamepad_button::DPAD_LEFT,
                left_trigger: 0,
                right_trigger: 255,
                axis_count: 4,
                axes,
            }),
            InputEvent::Touch { id: 9, phase: TouchPhase::Cancel, x: 100, y: 200 },
        ];
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| InputMessage { seq: u32::MAX - i as u32, event })
            .collect()
    }

    #[test]
    fn every_kind_round_trips() {
        for message in samples() {
            let bytes = message.encode();
            assert!(bytes.len() <= MAX_MESSAGE_LEN);
            assert_eq!(InputMessage::decode(&bytes), Ok(message));
        }
    }

    #[test]
    fn key_message_layout_matches_the_documentation() {
        let message = InputMessage {
            seq: 0x0403_0201,
            event: InputEvent::Key { usage: key::SPACE, down: true, repeat: false },
        };
        assert_eq!(message.encode(), [1, 1, 1, 2, 3, 4, 0x2C, 0, 1]);
    }

    #[test]
    fn every_truncation_is_rejected() {
        for message in samples() {
            let bytes = message.encode();
            for len in 0..bytes.len() {
                assert!(InputMessage::decode(&bytes[..len]).is_err(), "{message:?} cut at {len}");
            }
        }
    }

    #[test]
    fn malformed_messages_are_rejected_with_a_reason() {
        assert_eq!(InputMessage::decode(&[0; 65]), Err(InputDecodeError::Oversized(65)));
        assert_eq!(InputMessage::decode(&[2, 1, 0, 0, 0, 0]), Err(InputDecodeError::Version(2)));
        assert_eq!(InputMessage::decode(&[1, 99, 0, 0, 0, 0]), Err(InputDecodeError::UnknownKind(99)));
        assert_eq!(
            InputMessage::decode(&[1, 1, 0, 0, 0, 0, 4, 0, 1, 7]),
            Err(InputDecodeError::TrailingBytes(1))
        );
        assert_eq!(
            InputMessage::decode(&[1, 4, 0, 0, 0, 0, 0, 2]),
            Err(InputDecodeError::OutOfRange("boolean"))
        );
        let too_many_axes = [1, 6, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(
            InputMessage::decode(&too_many_axes),
            Err(InputDecodeError::OutOfRange("gamepad axis count"))
        );
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = 1; // reach past the version check most of the time
            }
            let _ = InputMessage::decode(&bytes);
        }
    }
}
