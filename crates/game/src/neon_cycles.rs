//! Neon Cycles, the built-in game: light cycles for 1–4 players on one screen.
//!
//! Every cycle leaves a wall behind it; touch a wall or the arena's edge and you are out.
//! The last one riding wins the round. Empty seats are driven by bots, so one player has
//! opponents, and with nobody joined the bots play an attract mode. Hold the action
//! button to boost (a meter drains while boosting and refills while not).

use crate::controls::{Direction, PadControls};
use crate::font::{LINE_HEIGHT, draw_text, draw_text_centered, text_width};
use crate::synth::{Note, Synth, Wave, midi_hz};
use crate::{
    AUDIO_CHANNELS, AUDIO_FRAMES_PER_TICK, CatalogueEntry, Frame, Game, GameInfo, MAX_PLAYERS, PlayerInput,
    StateError,
};

/// Arena size in cells.
pub const ARENA_WIDTH: i32 = 160;
pub const ARENA_HEIGHT: i32 = 90;
const PLAYERS: usize = MAX_PLAYERS as usize;
/// Ticks per cell at normal speed (30 cells/s); boosting moves a cell every tick.
const TICKS_PER_MOVE: u8 = 2;
const BOOST_MAX: u16 = 90;
const COUNTDOWN_TICKS: u32 = 180;
const ROUND_OVER_TICKS: u32 = 150;
const STATE_MAGIC: &[u8; 4] = b"NCY1";

const BACKGROUND: [u8; 3] = [6, 7, 16];
const ARENA: [u8; 3] = [12, 14, 30];
const GRID_LINE: [u8; 3] = [24, 28, 56];
const WHITE: [u8; 3] = [240, 240, 255];
const DIM_TEXT: [u8; 3] = [150, 150, 190];
/// Fill of the "press to join" banner shown while nobody plays.
pub const JOIN_BANNER: [u8; 3] = [40, 36, 110];
const COLOURS: [[u8; 3]; PLAYERS] = [[0, 230, 255], [255, 60, 200], [255, 220, 40], [80, 255, 110]];
const BASS_LINE: [u8; 16] = [45, 45, 57, 45, 43, 43, 55, 43, 41, 41, 53, 41, 43, 43, 55, 47];

pub fn catalogue_entry() -> CatalogueEntry {
    CatalogueEntry {
        info: GameInfo {
            id: "neon-cycles".into(),
            title: "Neon Cycles".into(),
            description: "Light cycles for 1-4 players: leave a wall behind you, outlast everyone else."
                .into(),
            max_players: MAX_PLAYERS,
            controls: vec![
                "Steer: arrow keys or WASD, D-pad or left stick, or the on-screen pad".into(),
                "Boost: hold Space or Enter, gamepad A or right trigger".into(),
                "Join: press anything; empty seats are bots".into(),
            ],
            crossplay_key: Some("neon-cycles".into()),
            pointer: false,
        },
        create: |seed| Box::new(NeonCycles::new(seed)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Counting down to the start of a round.
    Countdown(u32),
    Running,
    /// The round has ended; `winner` is a player index, if anyone survived.
    RoundOver {
        ticks: u32,
        winner: Option<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cycle {
    x: i32,
    y: i32,
    direction: Direction,
    alive: bool,
    human: bool,
    score: u16,
    boost: u16,
    move_clock: u8,
}

/// The game state. Everything but the synthesiser is part of the saved state.
#[derive(Debug, Clone)]
pub struct NeonCycles {
    tick: u64,
    rng: u64,
    phase: Phase,
    cycles: [Cycle; PLAYERS],
    /// Owner + 1 of every wall cell, 0 where empty; row-major `ARENA_WIDTH × ARENA_HEIGHT`.
    grid: Vec<u8>,
    controls: [PadControls; PLAYERS],
    synth: Synth,
}

impl NeonCycles {
    pub fn new(seed: u64) -> NeonCycles {
        let idle = Cycle {
            x: 0,
            y: 0,
            direction: Direction::Right,
            alive: false,
            human: false,
            score: 0,
            boost: BOOST_MAX,
            move_clock: 0,
        };
        let mut game = NeonCycles {
            tick: 0,
            rng: seed | 1,
            phase: Phase::Countdown(COUNTDOWN_TICKS),
            cycles: [idle; PLAYERS],
            grid: vec![0; (ARENA_WIDTH * ARENA_HEIGHT) as usize],
            controls: Default::default(),
            synth: Synth::default(),
        };
        game.start_round();
        game
    }

    /// Where the "press to join" banner is drawn in a `width × height` frame, as
    /// `(x, y, w, h)`; shown only while no human has joined.
    pub fn join_banner_rect(width: u32, height: u32) -> (i32, i32, i32, i32) {
        let (w, h) = (width as i32, height as i32);
        (w / 6, h * 5 / 8, w * 2 / 3, h / 6)
    }

    /// Number of players who have joined (the rest are bots).
    pub fn humans(&self) -> usize {
        self.cycles.iter().filter(|c| c.human).count()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: small, fast, and deterministic across platforms.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn start_round(&mut self) {
        self.grid.fill(0);
        let starts = [
            (ARENA_WIDTH / 6, ARENA_HEIGHT / 2, Direction::Right),
            (ARENA_WIDTH * 5 / 6, ARENA_HEIGHT / 2, Direction::Left),
            (ARENA_WIDTH / 2, ARENA_HEIGHT / 6, Direction::Down),
            (ARENA_WIDTH / 2, ARENA_HEIGHT * 5 / 6, Direction::Up),
        ];
        for (index, (cycle, (x, y, direction))) in self.cycles.iter_mut().zip(starts).enumerate() {
            *cycle = Cycle { x, y, direction, alive: true, boost: BOOST_MAX, move_clock: 0, ..*cycle };
            self.grid[(y * ARENA_WIDTH + x) as usize] = index as u8 + 1;
        }
        for controls in &mut self.controls {
            controls.clear_presses();
        }
        self.phase = Phase::Countdown(COUNTDOWN_TICKS);
    }

    fn cell(&self, x: i32, y: i32) -> Option<u8> {
        if (0..ARENA_WIDTH).contains(&x) && (0..ARENA_HEIGHT).contains(&y) {
            Some(self.grid[(y * ARENA_WIDTH + x) as usize])
        } else {
            None
        }
    }

    /// Free cells straight ahead of (`x`, `y`) in `direction`, up to `limit`.
    fn free_run(&self, x: i32, y: i32, direction: Direction, limit: i32) -> i32 {
        let (dx, dy) = direction.delta();
        (1..=limit).take_while(|&i| self.cell(x + dx * i, y + dy * i) == Some(0)).count() as i32
    }

    fn bot_direction(&mut self, index: usize) -> Direction {
        let cycle = self.cycles[index];
        let ahead = self.free_run(cycle.x, cycle.y, cycle.direction, 30);
        if ahead > 4 && !self.random().is_multiple_of(40) {
            return cycle.direction;
        }
        let turns = match cycle.direction {
            Direction::Up | Direction::Down => [Direction::Left, Direction::Right],
            Direction::Left | Direction::Right => [Direction::Up, Direction::Down],
        };
        let flip = self.random().is_multiple_of(2);
        let (first, second) = if flip { (turns[0], turns[1]) } else { (turns[1], turns[0]) };
        [cycle.direction, first, second]
            .into_iter()
            .max_by_key(|&d| self.free_run(cycle.x, cycle.y, d, 30))
            .unwrap_or(cycle.direction)
    }

    fn join(&mut self, player: usize) {
        let first_human = self.humans() == 0;
        self.cycles[player].human = true;
        self.play(Note::new(Wave::Square, midi_hz(76), 0.25, 0.15));
        if first_human {
            // Leave attract mode: a fresh match for the newcomer.
            for cycle in &mut self.cycles {
                cycle.score = 0;
            }
            self.start_round();
        }
    }

    fn play(&mut self, note: Note) {
        self.synth.play(note);
    }

    fn pan_of(x: i32) -> f32 {
        (x as f32 / ARENA_WIDTH as f32) * 1.6 - 0.8
    }

    fn advance_cycles(&mut self) {
        let mut moves: [Option<(i32, i32)>; PLAYERS] = [None; PLAYERS];
        #[allow(clippy::needless_range_loop)] // the body borrows self mutably between uses of index
        for index in 0..PLAYERS {
            let cycle = self.cycles[index];
            if !cycle.alive {
                continue;
            }
            let boosting = cycle.human && self.controls[index].action_held && cycle.boost > 0;
            let cycle = &mut self.cycles[index];
            if boosting {
                cycle.boost -= 1;
            } else if self.tick.is_multiple_of(3) {
                cycle.boost = (cycle.boost + 1).min(BOOST_MAX);
            }
            cycle.move_clock += if boosting { TICKS_PER_MOVE } else { 1 };
            if cycle.move_clock < TICKS_PER_MOVE {
                continue;
            }
            cycle.move_clock -= TICKS_PER_MOVE;
            let turn =
                if cycle.human { self.controls[index].take_press() } else { Some(self.bot_direction(index)) };
            let cycle = &mut self.cycles[index];
            if let Some(direction) = turn.filter(|&d| d != cycle.direction.opposite()) {
                if direction != cycle.direction && cycle.human {
                    let pan = Self::pan_of(cycle.x);
                    self.synth.play(Note {
                        pan,
                        ..Note::new(Wave::Square, midi_hz(72 + index as u8 * 3), 0.08, 0.05)
                    });
                }
                cycle.direction = direction;
            }
            let (dx, dy) = cycle.direction.delta();
            moves[index] = Some((cycle.x + dx, cycle.y + dy));
        }

        // Moves are simultaneous: decide every crash before writing any wall.
        let mut crashed = [false; PLAYERS];
        for (index, target) in moves.iter().enumerate() {
            let Some((x, y)) = *target else { continue };
            let head_on = moves.iter().enumerate().any(|(other, t)| other != index && *t == Some((x, y)));
            crashed[index] = head_on || self.cell(x, y) != Some(0);
        }
        for index in 0..PLAYERS {
            let Some((x, y)) = moves[index] else { continue };
            if crashed[index] {
                self.cycles[index].alive = false;
                let pan = Self::pan_of(x);
                self.play(Note { pan, ..Note::new(Wave::Noise, 2_000.0, 0.5, 0.45) });
                self.play(Note {
                    pan,
                    slide_per_second: 0.2,
                    ..Note::new(Wave::Square, midi_hz(60), 0.2, 0.4)
                });
            } else {
                self.cycles[index].x = x;
                self.cycles[index].y = y;
                self.grid[(y * ARENA_WIDTH + x) as usize] = index as u8 + 1;
            }
        }

        let alive: Vec<usize> = (0..PLAYERS).filter(|&i| self.cycles[i].alive).collect();
        if alive.len() <= 1 {
            let winner = alive.first().map(|&i| i as u8);
            if let Some(winner) = winner {
                self.cycles[winner as usize].score += 1;
                for (step, note) in [0u8, 4, 7, 12].into_iter().enumerate() {
                    self.play(Note::new(Wave::Square, midi_hz(67 + note), 0.15, 0.12 + step as f32 * 0.08));
                }
            }
            self.phase = Phase::RoundOver { ticks: ROUND_OVER_TICKS, winner };
        }
    }

    fn music(&mut self) {
        // An eighth note every 15 ticks: 120 beats per minute.
        if !self.tick.is_multiple_of(15) {
            return;
        }
        let step = (self.tick / 15) as usize;
        let quiet = if self.humans() == 0 { 0.5 } else { 1.0 };
        let bass = BASS_LINE[step % BASS_LINE.len()];
        self.play(Note::new(Wave::Triangle, midi_hz(bass), 0.35 * quiet, 0.24));
        if step % 2 == 1 {
            let lead = bass + [24, 27, 31, 34][step / 2 % 4];
            self.play(Note { pan: 0.3, ..Note::new(Wave::Square, midi_hz(lead), 0.03 * quiet, 0.12) });
        }
        if step.is_multiple_of(4) {
            self.play(Note::new(Wave::Noise, 9_000.0, 0.05 * quiet, 0.05));
        }
    }

    fn render_arena(&self, frame: &mut Frame) -> (i32, i32, i32) {
        let scale = ((frame.width as i32 / ARENA_WIDTH).min(frame.height as i32 / ARENA_HEIGHT)).max(1);
        let left = (frame.width as i32 - ARENA_WIDTH * scale) / 2;
        let top = (frame.height as i32 - ARENA_HEIGHT * scale) / 2;
        frame.clear(BACKGROUND);
        frame.fill_rect(left, top, ARENA_WIDTH * scale, ARENA_HEIGHT * scale, ARENA);
        for x in (0..=ARENA_WIDTH).step_by(10) {
            frame.fill_rect(left + x * scale, top, 1, ARENA_HEIGHT * scale, GRID_LINE);
        }
        for y in (0..=ARENA_HEIGHT).step_by(10) {
            frame.fill_rect(left, top + y * scale, ARENA_WIDTH * scale, 1, GRID_LINE);
        }
        let trails = COLOURS.map(|[r, g, b]| [r / 2 + 10, g / 2 + 10, b / 2 + 10]);
        for y in 0..ARENA_HEIGHT {
            for x in 0..ARENA_WIDTH {
                let owner = self.grid[(y * ARENA_WIDTH + x) as usize];
                if owner != 0 {
                    let colour = trails[owner as usize - 1];
                    frame.fill_rect(left + x * scale, top + y * scale, scale, scale, colour);
                }
            }
        }
        for (index, cycle) in self.cycles.iter().enumerate() {
            let (x, y) = (left + cycle.x * scale, top + cycle.y * scale);
            if cycle.alive {
                frame.fill_rect(x - scale / 2, y - scale / 2, scale * 2, scale * 2, COLOURS[index]);
                frame.fill_rect(x, y, scale, scale, WHITE);
            } else {
                frame.fill_rect(x - scale, y - scale, scale * 3, scale * 3, [90, 20, 20]);
            }
        }
        (scale, left, top)
    }

    fn render_hud(&self, frame: &mut Frame, text_scale: i32) {
        let (w, h) = (frame.width as i32, frame.height as i32);
        // Scores sit top-right; the top-left corner is kept for the latency probe strip.
        let mut y = text_scale * 4;
        for (index, cycle) in self.cycles.iter().enumerate() {
            let label = format!(
                "{} {:>2}",
                if cycle.human { format!("P{}", index + 1) } else { "CPU".into() },
                cycle.score
            );
            let x = w - text_width("CPU 00", text_scale) - text_scale * 6;
            draw_text(frame, &label, x, y, text_scale, COLOURS[index]);
            if cycle.human {
                let meter = (text_width("CPU 00", text_scale) * cycle.boost as i32) / BOOST_MAX as i32;
                frame.fill_rect(x, y + 8 * text_scale, meter, text_scale, COLOURS[index]);
            }
            y += (LINE_HEIGHT + 2) * text_scale;
        }

        let big = text_scale * 3;
        match self.phase {
            Phase::Countdown(ticks) if self.humans() > 0 => {
                let count = (ticks / 60 + 1).min(3);
                draw_text_centered(frame, &count.to_string(), w / 2, h / 2 - big * 4, big * 2, WHITE);
            }
            Phase::RoundOver { winner, .. } => {
                let text = match winner {
                    Some(p) if self.cycles[p as usize].human => format!("P{} WINS!", p + 1),
                    Some(_) => "CPU WINS".to_string(),
                    None => "DRAW".to_string(),
                };
                let colour = winner.map_or(WHITE, |p| COLOURS[p as usize]);
                draw_text_centered(frame, &text, w / 2, h / 2 - big * 4, big, colour);
            }
            _ => {}
        }

        if self.humans() == 0 {
            draw_text_centered(frame, "NEON CYCLES", w / 2, h / 4, big, WHITE);
            let (bx, by, bw, bh) = Self::join_banner_rect(frame.width, frame.height);
            frame.fill_rect(bx, by, bw, bh, JOIN_BANNER);
            let line = "PRESS ANY KEY OR BUTTON TO JOIN";
            let scale = (text_scale).min(bw / text_width(line, 1).max(1)).max(1);
            if (self.tick / 30).is_multiple_of(2) {
                draw_text_centered(frame, line, w / 2, by + bh / 2 - 4 * scale, scale, WHITE);
            }
            let hint = "ARROWS/WASD STEER - SPACE BOOSTS";
            let hint_scale = (scale / 2).max(1);
            draw_text_centered(frame, hint, w / 2, by + bh + 4 * hint_scale, hint_scale, DIM_TEXT);
        }
    }
}

impl Game for NeonCycles {
    fn step(&mut self, inputs: &[PlayerInput]) {
        for input in inputs {
            let player = input.player as usize;
            if player >= PLAYERS {
                continue;
            }
            self.controls[player].apply(&input.event);
            if self.controls[player].pressed_anything && !self.cycles[player].human {
                self.join(player);
            }
            self.controls[player].pressed_anything = false;
        }

        self.tick += 1;
        self.music();
        match self.phase {
            Phase::Countdown(ticks) => {
                if ticks % 60 == 0 && self.humans() > 0 {
                    self.play(Note::new(Wave::Square, midi_hz(69), 0.2, 0.1));
                }
                self.phase = match ticks {
                    0 | 1 => {
                        if self.humans() > 0 {
                            self.play(Note::new(Wave::Square, midi_hz(81), 0.25, 0.25));
                        }
                        for controls in &mut self.controls {
                            controls.clear_presses();
                        }
                        Phase::Running
                    }
                    // Attract mode does not wait as long.
                    _ if self.humans() == 0 => Phase::Countdown(ticks.saturating_sub(3)),
                    _ => Phase::Countdown(ticks - 1),
                };
            }
            Phase::Running => self.advance_cycles(),
            Phase::RoundOver { ticks, winner } => {
                if ticks <= 1 {
                    self.start_round();
                } else {
                    self.phase = Phase::RoundOver { ticks: ticks - 1, winner };
                }
            }
        }
    }

    fn render(&self, frame: &mut Frame) {
        let text_scale = (frame.height as i32 / 240).max(1);
        self.render_arena(frame);
        self.render_hud(frame, text_scale);
    }

    fn mix_audio(&mut self, out: &mut [f32]) {
        debug_assert_eq!(out.len(), AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS);
        self.synth.render(out);
        for sample in out.iter_mut() {
            *sample *= 0.8;
        }
    }

    fn save_state(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.grid.len());
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&self.tick.to_le_bytes());
        out.extend_from_slice(&self.rng.to_le_bytes());
        let (tag, ticks, winner) = match self.phase {
            Phase::Countdown(t) => (0u8, t, 0xFF),
            Phase::Running => (1, 0, 0xFF),
            Phase::RoundOver { ticks, winner } => (2, ticks, winner.unwrap_or(0xFF)),
        };
        out.push(tag);
        out.extend_from_slice(&ticks.to_le_bytes());
        out.push(winner);
        for (cycle, controls) in self.cycles.iter().zip(&self.controls) {
            out.extend_from_slice(&(cycle.x as i16).to_le_bytes());
            out.extend_from_slice(&(cycle.y as i16).to_le_bytes());
            out.extend_from_slice(&[cycle.direction.to_u8(), cycle.alive as u8, cycle.human as u8]);
            out.extend_from_slice(&cycle.score.to_le_bytes());
            out.extend_from_slice(&cycle.boost.to_le_bytes());
            out.push(cycle.move_clock);
            controls.save(&mut out);
        }
        out.extend_from_slice(&self.grid);
        out
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let mut r = StateReader { bytes };
        if r.take(4)? != STATE_MAGIC {
            return Err(StateError::WrongFormat);
        }
        let tick = r.u64()?;
        let rng = r.u64()?;
        if rng == 0 {
            return Err(StateError::Corrupt); // xorshift never reaches 0
        }
        let (tag, ticks, winner) = (r.u8()?, r.u32()?, r.u8()?);
        let phase = match tag {
            0 => Phase::Countdown(ticks),
            1 => Phase::Running,
            2 => Phase::RoundOver { ticks, winner: (winner < MAX_PLAYERS).then_some(winner) },
            _ => return Err(StateError::Corrupt),
        };
        let mut cycles = self.cycles;
        let mut controls = self.controls.clone();
        for (cycle, control) in cycles.iter_mut().zip(controls.iter_mut()) {
            cycle.x = r.i16()? as i32;
            cycle.y = r.i16()? as i32;
            cycle.direction = Direction::from_u8(r.u8()?).ok_or(StateError::Corrupt)?;
            cycle.alive = r.u8()? != 0;
            cycle.human = r.u8()? != 0;
            cycle.score = r.u16()?;
            cycle.boost = r.u16()?.min(BOOST_MAX);
            cycle.move_clock = r.u8()? % TICKS_PER_MOVE;
            *control = PadControls::load(&mut || r.u8())?;
            if !(0..ARENA_WIDTH).contains(&cycle.x) || !(0..ARENA_HEIGHT).contains(&cycle.y) {
                return Err(StateError::Corrupt);
            }
        }
        let grid = r.take(self.grid.len())?;
        if !r.bytes.is_empty() || grid.iter().any(|&owner| owner > MAX_PLAYERS) {
            return Err(StateError::Corrupt);
        }
        // Everything parsed: only now change the game.
        self.grid.copy_from_slice(grid);
        self.tick = tick;
        self.rng = rng;
        self.phase = phase;
        self.cycles = cycles;
        self.controls = controls;
        Ok(())
    }
}

struct StateReader<'a> {
    bytes: &'a [u8],
}

impl<'a> StateReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.bytes.len() < n {
            return Err(StateError::Corrupt);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        self.take(N)?.try_into().map_err(|_| StateError::Corrupt)
    }
    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn i16(&mut self) -> Result<i16, StateError> {
        Ok(i16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudplay_proto::input::{InputEvent, key};

    fn press(player: u8, usage: u16) -> PlayerInput {
        PlayerInput { player, event: InputEvent::Key { usage, down: true, repeat: false } }
    }

    /// A scripted match: two players join and steer at fixed ticks.
    fn script(tick: u64) -> Vec<PlayerInput> {
        match tick {
            10 => vec![press(0, key::SPACE), press(1, key::ENTER)],
            200 => vec![press(0, key::ARROW_UP)],
            230 => vec![press(1, key::S), press(0, key::ARROW_RIGHT)],
            400..=420 => vec![press(0, key::ARROW_DOWN)],
            _ => vec![],
        }
    }

    fn run(game: &mut NeonCycles, ticks: std::ops::Range<u64>, frame: &mut Frame) -> u64 {
        let mut audio = vec![0.0; AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS];
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for tick in ticks {
            game.step(&script(tick));
            game.mix_audio(&mut audio);
            if tick % 50 == 0 {
                game.render(frame);
                for byte in frame.pixels.iter().step_by(97) {
                    hash = (hash ^ *byte as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
        hash
    }

    #[test]
    fn same_inputs_give_the_same_game() {
        let (mut a, mut b) = (NeonCycles::new(7), NeonCycles::new(7));
        let mut frame = Frame::new(640, 360);
        let hash_a = run(&mut a, 0..2_000, &mut frame);
        let hash_b = run(&mut b, 0..2_000, &mut frame);
        assert_eq!(hash_a, hash_b);
        assert!(a.save_state() == b.save_state(), "runs diverged");
        assert_eq!(a.humans(), 2);
    }

    #[test]
    fn a_loaded_save_continues_identically() {
        let mut original = NeonCycles::new(3);
        let mut frame = Frame::new(320, 240);
        run(&mut original, 0..300, &mut frame);
        let saved = original.save_state();

        let mut restored = NeonCycles::new(99);
        restored.load_state(&saved).unwrap();
        assert!(restored.save_state() == saved);
        run(&mut original, 300..1_500, &mut frame);
        run(&mut restored, 300..1_500, &mut frame);
        assert!(original.save_state() == restored.save_state(), "runs diverged after loading");
    }

    #[test]
    fn corrupt_saves_are_refused_without_changing_the_game() {
        let mut game = NeonCycles::new(1);
        let before = game.save_state();
        assert_eq!(game.load_state(b"nope"), Err(StateError::WrongFormat));
        assert_eq!(game.load_state(&before[..before.len() - 1]), Err(StateError::Corrupt));
        let mut bad_grid = before.clone();
        *bad_grid.last_mut().unwrap() = 9;
        assert_eq!(game.load_state(&bad_grid), Err(StateError::Corrupt));
        assert!(game.save_state() == before, "a refused load changed the game");
    }

    #[test]
    fn a_player_steers_their_own_cycle() {
        let mut game = NeonCycles::new(5);
        game.step(&[press(2, key::SPACE)]);
        assert!(game.cycles[2].human && !game.cycles[0].human);
        while game.phase != Phase::Running {
            game.step(&[]);
        }
        // Player 3 starts heading down; a press of Left turns only that cycle.
        game.step(&[press(2, key::ARROW_LEFT)]);
        game.step(&[]);
        assert_eq!(game.cycles[2].direction, Direction::Left);
        assert!(!game.cycles[3].human);
    }

    #[test]
    fn the_join_banner_disappears_when_someone_joins() {
        let mut game = NeonCycles::new(5);
        let mut frame = Frame::new(640, 360);
        game.render(&mut frame);
        let (bx, by, _, _) = NeonCycles::join_banner_rect(640, 360);
        let at = (by as usize + 2) * frame.stride + (bx as usize + 2) * 4;
        assert_eq!(&frame.pixels[at..at + 3], &JOIN_BANNER);
        game.step(&[press(0, key::W)]);
        game.render(&mut frame);
        assert_ne!(&frame.pixels[at..at + 3], &JOIN_BANNER);
    }

    #[test]
    fn the_music_plays() {
        let mut game = NeonCycles::new(5);
        let mut audio = vec![0.0; AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS];
        let mut energy = 0.0;
        for _ in 0..60 {
            game.step(&[]);
            game.mix_audio(&mut audio);
            energy += audio.iter().map(|s| s * s).sum::<f32>();
        }
        assert!(energy > 1.0, "one second of attract mode has sound");
    }
}
