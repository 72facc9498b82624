//! From the browser's keys and gamepads to X keysyms.

/// Gamepad (W3C standard mapping) → keyboard key (HID usage), for native games: D-pad and
/// left stick = arrows, south = Space, east = Escape, west = Left Ctrl, north = Tab,
/// Start = Enter, Back = Backspace.
pub(super) const PAD_KEYS: [(u32, u16); 10] = [
    (12, 0x52), // up
    (13, 0x51), // down
    (14, 0x50), // left
    (15, 0x4F), // right
    (0, 0x2C),  // south → Space
    (1, 0x29),  // east → Escape
    (2, 0xE0),  // west → Left Ctrl
    (3, 0x2B),  // north → Tab
    (9, 0x28),  // start → Enter
    (8, 0x2A),  // back → Backspace
];

/// Which of [`PAD_KEYS`] a gamepad snapshot holds (bit i = entry i).
pub(super) fn gamepad_keys(pad: &cloudplay_proto::input::GamepadState) -> u16 {
    if !pad.connected {
        return 0;
    }
    const STICK: i16 = 16_000;
    let axis = |i: usize| pad.axes().get(i).copied().unwrap_or(0);
    let stick = [axis(1) < -STICK, axis(1) > STICK, axis(0) < -STICK, axis(0) > STICK];
    PAD_KEYS.iter().enumerate().fold(0, |held, (bit, &(button, _))| {
        let pressed = pad.pressed(button) || (bit < 4 && stick[bit]);
        if pressed { held | 1 << bit } else { held }
    })
}

/// HID usage → X keysym, for the keys a browser sends.
pub(super) fn keysym_for(usage: u16) -> Option<u32> {
    Some(match usage {
        0x04..=0x1D => b'a' as u32 + (usage - 0x04) as u32,
        0x1E..=0x26 => b'1' as u32 + (usage - 0x1E) as u32,
        0x27 => b'0' as u32,
        0x28 => 0xFF0D, // Return
        0x29 => 0xFF1B, // Escape
        0x2A => 0xFF08, // BackSpace
        0x2B => 0xFF09, // Tab
        0x2C => b' ' as u32,
        0x2D => b'-' as u32,
        0x2E => b'=' as u32,
        0x2F => b'[' as u32,
        0x30 => b']' as u32,
        0x31 => b'\\' as u32,
        0x33 => b';' as u32,
        0x34 => b'\'' as u32,
        0x35 => b'`' as u32,
        0x36 => b',' as u32,
        0x37 => b'.' as u32,
        0x38 => b'/' as u32,
        0x39 => 0xFFE5,                                // Caps_Lock
        0x3A..=0x45 => 0xFFBE + (usage - 0x3A) as u32, // F1…F12
        0x49 => 0xFF63,                                // Insert
        0x4A => 0xFF50,                                // Home
        0x4B => 0xFF55,                                // Prior
        0x4C => 0xFFFF,                                // Delete
        0x4D => 0xFF57,                                // End
        0x4E => 0xFF56,                                // Next
        0x4F => 0xFF53,                                // Right
        0x50 => 0xFF51,                                // Left
        0x51 => 0xFF54,                                // Down
        0x52 => 0xFF52,                                // Up
        0xE0 => 0xFFE3,                                // Control_L
        0xE1 => 0xFFE1,                                // Shift_L
        0xE2 => 0xFFE9,                                // Alt_L
        0xE3 => 0xFFEB,                                // Super_L
        0xE4 => 0xFFE4,                                // Control_R
        0xE5 => 0xFFE2,                                // Shift_R
        0xE6 => 0xFFEA,                                // Alt_R
        _ => return None,
    })
}
