//! The pipe between a host and its libretro worker process (`cloudplay libretro-worker`),
//! as types both sides use. Every message is `kind: u8 | length: u32 LE | payload`:
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | [`Kind::Init`] | host → worker | JSON [`WorkerInit`] |
//! | [`Kind::Ready`] | worker → host | [`Ready`]: empty, or the [`LoadFailure`] code and its message (UTF-8) |
//! | [`Kind::Step`] | host → worker | `run_ahead: u8` (frames to run ahead for the picture, 0–3), then the tick's inputs: `player: u8, length: u8, input message` (protocol v1) … |
//! | [`Kind::Stepped`] | worker → host | [`Stepped`]: `flags: u8` (1 = new picture, 2 = shut down), then if a picture `width: u32, height: u32, aspect: f32, RGBA` (with run-ahead, the picture that many frames ahead), then the tick's audio (f32 LE, 48 kHz stereo) |
//! | [`Kind::Save`] | host → worker | empty |
//! | [`Kind::Saved`] | worker → host | the save state |
//! | [`Kind::Load`] | host → worker | a save state |
//! | [`Kind::Loaded`] | worker → host | `ok: u8` |
//! | [`Kind::ReadSaveRam`] | host → worker | empty |
//! | [`Kind::SaveRam`] | worker → host | the core's in-game save (battery RAM), at most [`MAX_SAVE_RAM`] bytes; empty if it has none |
//! | [`Kind::WriteSaveRam`] | host → worker | an in-game save to put in place (before the first step); answered by [`Kind::Loaded`] |
//!
//! In-game saves cross this pipe and nothing else: the worker's own files (the core's save
//! directory) stay inside its jail and go with it, and the host never opens a file that
//! game code could have written or linked.
//!
//! The worker runs untrusted code: everything read from it is checked here, and nothing
//! here does I/O (the runtime reads and writes the bytes).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::{InputEvent, InputMessage};

/// Largest message either side accepts (a 4096×4096 RGBA picture plus audio).
pub const MAX_MESSAGE: usize = 4096 * 4096 * 4 + 64 * 1024;
/// Largest picture side a worker may send (libretro cores stay far below).
pub const MAX_PICTURE_SIDE: u32 = 4096;
/// Largest in-game save either side sends (what a cloud save may hold).
pub const MAX_SAVE_RAM: usize = crate::runtime::MAX_CLOUD_SAVE_BYTES;
/// Bytes of a message's header.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Init = 1,
    Ready = 2,
    Step = 3,
    Stepped = 4,
    Save = 5,
    Saved = 6,
    Load = 7,
    Loaded = 8,
    ReadSaveRam = 9,
    SaveRam = 10,
    WriteSaveRam = 11,
}

impl Kind {
    pub fn of(byte: u8) -> Option<Kind> {
        use Kind::*;
        [Init, Ready, Step, Stepped, Save, Saved, Load, Loaded, ReadSaveRam, SaveRam, WriteSaveRam]
            .into_iter()
            .find(|k| *k as u8 == byte)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("a message of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// The header of a message of `length` payload bytes.
pub fn header(kind: Kind, length: usize) -> [u8; HEADER_LEN] {
    let mut head = [kind as u8, 0, 0, 0, 0];
    head[1..].copy_from_slice(&(length as u32).to_le_bytes());
    head
}

/// A header read from the pipe: the message's kind and payload length, both checked.
pub fn parse_header(head: [u8; HEADER_LEN]) -> Result<(Kind, usize), PipeError> {
    let kind = Kind::of(head[0]).ok_or(PipeError::UnknownKind(head[0]))?;
    let length = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if length > MAX_MESSAGE {
        return Err(PipeError::TooLarge(length));
    }
    Ok((kind, length))
}

/// What the worker loads.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerInit {
    pub core_path: PathBuf,
    pub content_path: PathBuf,
    pub options: BTreeMap<String, String>,
    pub system_dir: PathBuf,
}

/// Why a worker could not load its game; the host rebuilds the same error from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LoadFailure {
    CoreMissing = 1,
    CoreInvalid = 2,
    ContentMissing = 3,
    ContentRejected = 4,
    Other = 5,
}

/// The worker's answer to [`Kind::Init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    Loaded,
    Failed(LoadFailure, String),
}

impl Ready {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Ready::Loaded => Vec::new(),
            Ready::Failed(failure, message) => {
                let mut payload = vec![*failure as u8];
                payload.extend_from_slice(message.as_bytes());
                payload
            }
        }
    }

    pub fn parse(payload: &[u8]) -> Ready {
        use LoadFailure::*;
        let Some((&code, message)) = payload.split_first() else { return Ready::Loaded };
        let failure = [CoreMissing, CoreInvalid, ContentMissing, ContentRejected]
            .into_iter()
            .find(|f| *f as u8 == code)
            .unwrap_or(Other);
        Ready::Failed(failure, String::from_utf8_lossy(message).into_owned())
    }
}

/// Most frames a step may run ahead.
pub const MAX_RUN_AHEAD: u8 = 3;

/// Starts a [`Kind::Step`] payload: clears it and sets the frames to run ahead.
pub fn start_step(payload: &mut Vec<u8>, run_ahead: u8) {
    payload.clear();
    payload.push(run_ahead.min(MAX_RUN_AHEAD));
}

/// Appends one player's input to a [`Kind::Step`] payload.
pub fn push_step_input(payload: &mut Vec<u8>, player: u8, event: InputEvent) {
    let bytes = InputMessage { seq: 0, event }.encode();
    payload.extend_from_slice(&[player, bytes.len() as u8]);
    payload.extend_from_slice(&bytes);
}

/// A [`Kind::Step`] payload: the frames to run ahead (at most [`MAX_RUN_AHEAD`]) and the
/// inputs, `(player, event)`; malformed inputs are skipped and a truncated tail ends them.
pub fn parse_step(payload: &[u8]) -> (u8, impl Iterator<Item = (u8, InputEvent)> + '_) {
    let run_ahead = payload.first().map_or(0, |&n| n.min(MAX_RUN_AHEAD));
    (run_ahead, step_inputs(payload.get(1..).unwrap_or_default()))
}

fn step_inputs(payload: &[u8]) -> impl Iterator<Item = (u8, InputEvent)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        loop {
            let (&player, &length) = (payload.get(at)?, payload.get(at + 1)?);
            let bytes = payload.get(at + 2..at + 2 + length as usize)?;
            at += 2 + length as usize;
            if let Ok(message) = InputMessage::decode(bytes) {
                return Some((player, message.event));
            }
        }
    })
}

/// A picture in a worker's answer to a step.
#[derive(Debug, PartialEq)]
pub struct SteppedPicture<'a> {
    pub width: u32,
    pub height: u32,
    pub aspect: f32,
    pub rgba: &'a [u8],
}

/// Each player's rumble motors (strong, weak), 0–65535.
pub type RumbleState = [[u16; 2]; crate::input::MAX_PLAYERS as usize];

/// Bytes of a [`RumbleState`] on the wire.
const RUMBLE_LEN: usize = crate::input::MAX_PLAYERS as usize * 4;

/// A worker's answer to a step.
#[derive(Debug, PartialEq)]
pub struct Stepped<'a> {
    pub picture: Option<SteppedPicture<'a>>,
    /// The players' rumble, when it changed in this step.
    pub rumble: Option<RumbleState>,
    /// Interleaved stereo f32 samples, little-endian (a trailing partial sample is ignored).
    pub audio: &'a [u8],
    pub shut_down: bool,
}

impl<'a> Stepped<'a> {
    /// The payload in parts, ready to be written after its [`header`]: flags, the
    /// picture's size (when there is a picture), the rumble (when it changed); the picture;
    /// the sound. Write `head[..head_len]`.
    pub fn parts(&self) -> ([u8; 13 + RUMBLE_LEN], usize, &'a [u8], &'a [u8]) {
        let mut head = [0u8; 13 + RUMBLE_LEN];
        head[0] =
            self.picture.is_some() as u8 | (self.shut_down as u8) << 1 | (self.rumble.is_some() as u8) << 2;
        let mut len = 1;
        let mut rgba: &[u8] = &[];
        if let Some(picture) = &self.picture {
            head[1..5].copy_from_slice(&picture.width.to_le_bytes());
            head[5..9].copy_from_slice(&picture.height.to_le_bytes());
            head[9..13].copy_from_slice(&picture.aspect.to_le_bytes());
            rgba = picture.rgba;
            len = 13;
        }
        if let Some(rumble) = &self.rumble {
            for motor in rumble.iter().flatten() {
                head[len..len + 2].copy_from_slice(&motor.to_le_bytes());
                len += 2;
            }
        }
        (head, len, rgba, self.audio)
    }

    /// Reads a worker's answer; `None` for anything malformed.
    pub fn parse(payload: &'a [u8]) -> Option<Stepped<'a>> {
        let flags = *payload.first()?;
        let mut rest = &payload[1..];
        let mut picture = None;
        let mut size = None;
        if flags & 1 != 0 {
            let field = |at: usize| rest.get(at..at + 4).map(|b| [b[0], b[1], b[2], b[3]]);
            let (width, height) = (u32::from_le_bytes(field(0)?), u32::from_le_bytes(field(4)?));
            let aspect = f32::from_le_bytes(field(8)?);
            let sides = 1..=MAX_PICTURE_SIDE;
            let valid =
                sides.contains(&width) && sides.contains(&height) && aspect.is_finite() && aspect >= 0.0;
            if !valid {
                return None;
            }
            size = Some((width, height, aspect));
            rest = &rest[12..];
        }
        let mut rumble = None;
        if flags & 4 != 0 {
            let block = rest.get(..RUMBLE_LEN)?;
            let mut state = RumbleState::default();
            for (motor, bytes) in state.iter_mut().flatten().zip(block.chunks_exact(2)) {
                *motor = u16::from_le_bytes([bytes[0], bytes[1]]);
            }
            rumble = Some(state);
            rest = &rest[RUMBLE_LEN..];
        }
        if let Some((width, height, aspect)) = size {
            let len = width as usize * height as usize * 4; // at most 64 MiB
            let rgba = rest.get(..len)?;
            picture = Some(SteppedPicture { width, height, aspect, rgba });
            rest = &rest[len..];
        }
        Some(Stepped { picture, rumble, audio: rest, shut_down: flags & 2 != 0 })
    }
}

/// The worker's answer to [`Kind::Load`].
pub fn loaded(ok: bool) -> [u8; 1] {
    [ok as u8]
}

pub fn parse_loaded(payload: &[u8]) -> bool {
    payload == [1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::key;

    #[test]
    fn headers_round_trip_and_refuse_what_is_unknown_or_too_large() {
        assert_eq!(parse_header(header(Kind::Stepped, 1234)), Ok((Kind::Stepped, 1234)));
        assert_eq!(parse_header([0, 0, 0, 0, 0]), Err(PipeError::UnknownKind(0)));
        let mut huge = header(Kind::Saved, 0);
        huge[1..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_header(huge), Err(PipeError::TooLarge(u32::MAX as usize)));
    }

    #[test]
    fn load_failures_cross_unchanged() {
        for failure in [
            LoadFailure::CoreMissing,
            LoadFailure::CoreInvalid,
            LoadFailure::ContentMissing,
            LoadFailure::ContentRejected,
            LoadFailure::Other,
        ] {
            let ready = Ready::Failed(failure, "why".into());
            assert_eq!(Ready::parse(&ready.encode()), ready);
        }
        assert_eq!(Ready::parse(&Ready::Loaded.encode()), Ready::Loaded);
        assert_eq!(Ready::parse(&[200, b'x']), Ready::Failed(LoadFailure::Other, "x".into()));
    }

    #[test]
    fn step_inputs_round_trip_and_skip_what_is_malformed() {
        let mut payload = Vec::new();
        start_step(&mut payload, 9);
        push_step_input(&mut payload, 0, InputEvent::Key { usage: key::ARROW_UP, down: true, repeat: false });
        payload.extend_from_slice(&[1, 2, 0xff, 0xff]); // not an input message: skipped
        push_step_input(&mut payload, 3, InputEvent::Key { usage: key::SPACE, down: false, repeat: false });
        payload.extend_from_slice(&[2, 40, 1]); // cut off: ends the list
        let (run_ahead, inputs) = parse_step(&payload);
        assert_eq!(run_ahead, MAX_RUN_AHEAD, "capped");
        let inputs: Vec<_> = inputs.collect();
        assert_eq!(
            inputs,
            [
                (0, InputEvent::Key { usage: key::ARROW_UP, down: true, repeat: false }),
                (3, InputEvent::Key { usage: key::SPACE, down: false, repeat: false })
            ]
        );
    }

    #[test]
    fn stepped_answers_round_trip() {
        let rgba = [9u8; 2 * 3 * 4];
        let audio = [1u8; 16];
        let rumble = Some([[65_535, 0], [0, 0], [0, 1], [2, 3]]);
        for (picture, rumble) in [(true, None), (true, rumble), (false, None), (false, rumble)] {
            let stepped = Stepped {
                picture: picture.then_some(SteppedPicture { width: 2, height: 3, aspect: 1.5, rgba: &rgba }),
                rumble,
                audio: &audio,
                shut_down: picture,
            };
            let (head, len, picture, sound) = stepped.parts();
            let payload = [&head[..len], picture, sound].concat();
            assert_eq!(Stepped::parse(&payload), Some(stepped));
        }
    }

    #[test]
    fn init_refuses_unknown_fields() {
        let init = r#"{"core_path":"a","content_path":"b","options":{},"system_dir":"c"}"#;
        assert!(serde_json::from_str::<WorkerInit>(init).is_ok());
        let extra = init.replace(r#""c"}"#, r#""c","shell":"/bin/sh"}"#);
        assert!(serde_json::from_str::<WorkerInit>(&extra).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]

        /// Whatever a (hostile) worker writes as a step's answer is taken whole or refused.
        #[test]
        fn whatever_a_worker_writes_is_read_safely(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            if let Some(stepped) = Stepped::parse(&bytes)
                && let Some(picture) = stepped.picture
            {
                proptest::prop_assert_eq!(picture.rgba.len(), picture.width as usize * picture.height as usize * 4);
                proptest::prop_assert!((1..=MAX_PICTURE_SIDE).contains(&picture.width));
                proptest::prop_assert!(picture.aspect.is_finite());
            }
            if bytes.len() >= HEADER_LEN
                && let Ok((_, length)) = parse_header(bytes[..HEADER_LEN].try_into().unwrap())
            {
                proptest::prop_assert!(length <= MAX_MESSAGE);
            }
            let (run_ahead, inputs) = parse_step(&bytes);
            proptest::prop_assert!(run_ahead <= MAX_RUN_AHEAD);
            proptest::prop_assert!(inputs.count() <= bytes.len() / 2);
        }

        /// Pictures of any plausible size with any header are taken only when whole.
        #[test]
        fn stepped_pictures_are_taken_only_when_whole(
            width in 0u32..40, height in 0u32..40, aspect in proptest::prelude::any::<f32>(), cut in 0usize..64, flags in 0u8..4,
        ) {
            let mut payload = vec![flags];
            payload.extend_from_slice(&width.to_le_bytes());
            payload.extend_from_slice(&height.to_le_bytes());
            payload.extend_from_slice(&aspect.to_le_bytes());
            payload.resize(payload.len() + (width * height * 4) as usize, 7);
            payload.extend_from_slice(&[0; 8]);
            payload.truncate(payload.len().saturating_sub(cut));
            let parsed = Stepped::parse(&payload);
            let whole = cut <= 8 && width > 0 && height > 0 && aspect.is_finite() && aspect >= 0.0;
            if flags & 1 != 0 {
                proptest::prop_assert_eq!(parsed.is_some(), whole);
            }
        }
    }
}
