//! Tiny programs of our own for emulated consoles (MIT/Apache like the rest of cloudplay),
//! assembled here so that tests and benchmarks of the libretro runtime need no third-party
//! ROM.
//!
//! "Colour Pad" (NES): each frame it reads controller 1, paints the whole screen in a colour
//! picked by the buttons held, and sounds a square wave while A is held. Battery-backed RAM
//! at $6000 counts the frames A was held, so in-game saves (SRAM) can be tested too.
//! "Colour Pad, late" is the same program reacting one frame late, as many games do: each
//! frame paints the colour of the buttons read the frame before (the sound is not late). It
//! makes a game's own input lag measurable, and what run-ahead removes.
//! "Shade Pad" (Game Boy): white, black while A is held.

/// iNES header: NROM-128 (mapper 0), one 16 KiB PRG bank, one 8 KiB CHR bank, battery.
const HEADER: [u8; 16] = [b'N', b'E', b'S', 0x1A, 1, 1, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// Address of the A-frames counter in battery-backed RAM (16 bits, little endian).
pub const SAVE_COUNTER: u16 = 0x6000;
const PRG_SIZE: usize = 16 * 1024;
const CHR_SIZE: usize = 8 * 1024;
/// The PRG bank is mapped at $C000 (and mirrored at $8000).
const ORIGIN: u16 = 0xC000;

/// NES palette index shown when the buttons in the index are held (bit 7 = A … bit 0 =
/// Right); nothing held is deep blue, A alone is red.
pub fn colour_for(buttons: u8) -> u8 {
    match buttons {
        0 => 0x02,
        0x80 => 0x16,
        b => 0x11 + (b % 12) + 0x10 * ((b / 12) % 3),
    }
}

/// A minimal 6502 assembler: enough opcodes for this program, with backward and forward labels.
struct Assembler {
    code: Vec<u8>,
    labels: Vec<(&'static str, u16)>,
    branches: Vec<(usize, &'static str)>,
    jumps: Vec<(usize, &'static str)>,
}

impl Assembler {
    fn pc(&self) -> u16 {
        ORIGIN + self.code.len() as u16
    }
    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.pc()));
    }
    fn op(&mut self, bytes: &[u8]) {
        self.code.extend_from_slice(bytes);
    }
    fn abs(&mut self, opcode: u8, address: u16) {
        self.op(&[opcode, address as u8, (address >> 8) as u8]);
    }
    fn branch(&mut self, opcode: u8, label: &'static str) {
        self.branches.push((self.code.len() + 1, label));
        self.op(&[opcode, 0]);
    }
    fn jump(&mut self, label: &'static str) {
        self.jumps.push((self.code.len() + 1, label));
        self.op(&[0x4C, 0, 0]);
    }
    fn address(&self, name: &str) -> u16 {
        self.labels.iter().find(|(label, _)| *label == name).map(|(_, at)| *at).expect("label defined")
    }
    fn finish(mut self) -> Vec<u8> {
        for (at, label) in std::mem::take(&mut self.branches) {
            let offset = self.address(label) as i32 - (ORIGIN as i32 + at as i32 + 1);
            assert!((-128..=127).contains(&offset), "branch to {label} out of range");
            self.code[at] = offset as i8 as u8;
        }
        for (at, label) in std::mem::take(&mut self.jumps) {
            let target = self.address(label);
            self.code[at..at + 2].copy_from_slice(&target.to_le_bytes());
        }
        self.code
    }
}

const PPUCTRL: u16 = 0x2000;
const PPUMASK: u16 = 0x2001;
const PPUSTATUS: u16 = 0x2002;
const PPUADDR: u16 = 0x2006;
const PPUDATA: u16 = 0x2007;
const PULSE1_CONTROL: u16 = 0x4000;
const PULSE1_TIMER_LOW: u16 = 0x4002;
const PULSE1_TIMER_HIGH: u16 = 0x4003;
const APU_STATUS: u16 = 0x4015;
const JOYPAD1: u16 = 0x4016;
const COLOUR_TABLE: u16 = 0xF000;

/// The whole ROM file (iNES).
pub fn colour_pad_rom() -> Vec<u8> {
    colour_pad(false)
}

/// Colour Pad reacting one frame late: its picture shows the buttons of the frame before.
pub fn colour_pad_late_rom() -> Vec<u8> {
    colour_pad(true)
}

fn colour_pad(late: bool) -> Vec<u8> {
    let mut a = Assembler { code: Vec::new(), labels: Vec::new(), branches: Vec::new(), jumps: Vec::new() };
    a.label("reset");
    a.op(&[0x78, 0xD8, 0xA2, 0xFF, 0x9A]); // SEI, CLD, LDX #$FF, TXS
    a.op(&[0xA9, 0x00]); // LDA #0: NMI and rendering off, so the backdrop colour fills the screen
    a.abs(0x8D, PPUCTRL);
    a.abs(0x8D, PPUMASK);
    a.op(&[0x85, 0x01]); // STA $01: no buttons the frame before
    for name in ["warm1", "warm2"] {
        // The PPU needs two vertical blanks to warm up.
        a.label(name);
        a.abs(0x2C, PPUSTATUS); // BIT
        a.branch(0x10, name); // BPL
    }
    // Pulse 1: enabled, length counter halted, timer for ~440 Hz, silent until A.
    a.op(&[0xA9, 0x01]);
    a.abs(0x8D, APU_STATUS);
    a.op(&[0xA9, 0x30]);
    a.abs(0x8D, PULSE1_CONTROL);
    a.op(&[0xA9, 0xFD]);
    a.abs(0x8D, PULSE1_TIMER_LOW);
    a.op(&[0xA9, 0x00]);
    a.abs(0x8D, PULSE1_TIMER_HIGH);

    a.label("frame");
    // Strobe the controller and shift its eight buttons into $00 (A first → bit 7).
    a.op(&[0xA9, 0x01]);
    a.abs(0x8D, JOYPAD1);
    a.op(&[0xA9, 0x00]);
    a.abs(0x8D, JOYPAD1);
    a.op(&[0xA2, 0x08]); // LDX #8
    a.label("read");
    a.abs(0xAD, JOYPAD1); // LDA $4016
    a.op(&[0x4A, 0x26, 0x00, 0xCA]); // LSR A, ROL $00, DEX
    a.branch(0xD0, "read"); // BNE
    // Backdrop colour = table[buttons], written to $3F00; the address is then pointed back
    // at $3F00, which is what the PPU shows while rendering is off.
    a.abs(0xAD, PPUSTATUS);
    for (high, low, write) in [(0x3F, 0x00, true), (0x3F, 0x00, false)] {
        a.op(&[0xA9, high]);
        a.abs(0x8D, PPUADDR);
        a.op(&[0xA9, low]);
        a.abs(0x8D, PPUADDR);
        if write {
            // LDX $00, or LDX $01 (the buttons of the frame before) when late
            a.op(&[0xA6, late as u8]);
            a.abs(0xBD, COLOUR_TABLE); // LDA table,X
            a.abs(0x8D, PPUDATA);
        }
    }
    a.op(&[0xA5, 0x00, 0x85, 0x01]); // LDA $00, STA $01: this frame's buttons, for the next
    // Square wave at full volume while A is held, silent otherwise.
    a.op(&[0xA5, 0x00, 0x29, 0x80]); // LDA $00, AND #$80
    a.branch(0xF0, "silent"); // BEQ
    a.op(&[0xA9, 0xBF]);
    a.abs(0x8D, PULSE1_CONTROL);
    a.abs(0xEE, SAVE_COUNTER); // INC counter
    a.branch(0xD0, "wait"); // BNE: no carry into the high byte
    a.abs(0xEE, SAVE_COUNTER + 1);
    a.jump("wait");
    a.label("silent");
    a.op(&[0xA9, 0x30]);
    a.abs(0x8D, PULSE1_CONTROL);
    a.label("wait");
    a.abs(0x2C, PPUSTATUS);
    a.branch(0x10, "wait");
    a.jump("frame");
    a.label("interrupt");
    a.op(&[0x40]); // RTI
    let reset = a.address("reset");
    let interrupt = a.address("interrupt");
    let code = a.finish();

    let mut prg = vec![0u8; PRG_SIZE];
    prg[..code.len()].copy_from_slice(&code);
    let table = (COLOUR_TABLE - ORIGIN) as usize;
    for buttons in 0..=255u8 {
        prg[table + buttons as usize] = colour_for(buttons);
    }
    for (vector, target) in [(0xFFFA, interrupt), (0xFFFC, reset), (0xFFFE, interrupt)] {
        let at = vector - ORIGIN as usize;
        prg[at..at + 2].copy_from_slice(&target.to_le_bytes());
    }
    let mut rom = Vec::with_capacity(HEADER.len() + PRG_SIZE + CHR_SIZE);
    rom.extend_from_slice(&HEADER);
    rom.extend_from_slice(&prg);
    rom.resize(HEADER.len() + PRG_SIZE + CHR_SIZE, 0);
    rom
}

/// "Shade Pad" for the Game Boy: the whole screen is white, and black while A is held (the
/// background palette register is rewritten from the joypad in a loop). A 32 KiB ROM-only
/// cartridge; the Nintendo logo is left out (emulators started without a boot ROM, like
/// gambatte, do not check it).
pub fn shade_pad_gb_rom() -> Vec<u8> {
    let mut rom = vec![0u8; 32 * 1024];
    rom[0x100..0x104].copy_from_slice(&[0x00, 0xC3, 0x50, 0x01]); // entry: NOP; JP $0150
    rom[0x134..0x13D].copy_from_slice(b"SHADEPAD\0");
    // Cartridge type, ROM and RAM size 0: ROM only, 32 KiB, no RAM. Header checksum:
    rom[0x14D] = rom[0x134..0x14D].iter().fold(0u8, |x, b| x.wrapping_sub(*b).wrapping_sub(1));
    let program = [
        0x3E, 0x10, // LD A,$10: select the action buttons
        0xE0, 0x00, // LDH ($00),A
        0xF0, 0x00, // LDH A,($00) (read twice: the lines settle)
        0xF0, 0x00, // LDH A,($00)
        0xE6, 0x01, // AND $01: A (0 = pressed)
        0x28, 0x04, // JR Z,+4
        0x3E, 0x00, // LD A,$00: every shade white
        0x18, 0x02, // JR +2
        0x3E, 0xFF, // LD A,$FF: every shade black
        0xE0, 0x47, // LDH ($47),A: background palette
        0x18, 0xEA, // JR $0150
    ];
    rom[0x150..0x150 + program.len()].copy_from_slice(&program);
    rom
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rom_has_the_ines_layout_and_vectors() {
        let rom = colour_pad_rom();
        assert_eq!(rom.len(), 16 + 16 * 1024 + 8 * 1024);
        assert_eq!(&rom[..4], b"NES\x1A");
        let vector = |at: usize| u16::from_le_bytes([rom[16 + at - 0xC000], rom[16 + at - 0xC000 + 1]]);
        assert_eq!(vector(0xFFFC), 0xC000);
        assert_eq!(rom[16], 0x78); // SEI
        assert_ne!(colour_for(0), colour_for(0x80));
    }

    #[test]
    fn game_boy_rom_has_a_valid_header_checksum() {
        let rom = shade_pad_gb_rom();
        assert_eq!(rom.len(), 32 * 1024);
        let sum = rom[0x134..0x14D].iter().fold(0u8, |x, b| x.wrapping_sub(*b).wrapping_sub(1));
        assert_eq!(rom[0x14D], sum);
        assert_eq!(&rom[0x100..0x104], &[0x00, 0xC3, 0x50, 0x01]);
    }
}
