//! Runtime specs: how a catalogue entry is run. The control plane stores one per game (as
//! JSON) and hands it to the host that runs the session; hosts advertise which kinds they
//! can run, and placement only picks hosts that advertise the kind a game needs.
//!
//! A spec names things the host resolves in its own directories (a core by name, content
//! by a path relative to the host's content directory), so a spec can never reach outside
//! what the host's operator installed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most arguments a native command may have.
pub const MAX_NATIVE_ARGS: usize = 32;
const MAX_TEXT: usize = 1024;
const MAX_OPTIONS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuntimeSpec {
    /// A game compiled into cloudplay (`cloudplay_game::Catalogue`).
    Builtin { game: String },
    /// A libretro core (`{core}_libretro.so` in the host's cores directory) running
    /// `content` (a path relative to the host's content directory).
    Libretro {
        core: String,
        content: String,
        /// Core options (`nestopia_palette = "cxa2025as"`); unset ones take the core's default.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        options: BTreeMap<String, String>,
        /// Frames the core is run ahead of what is shown (0–3), hiding that many frames of
        /// the game's own input lag (as RetroArch's run-ahead does); each costs a state
        /// save, a load and an extra frame of emulation per tick.
        #[serde(default, skip_serializing_if = "is_zero")]
        run_ahead: u8,
    },
    /// A native Linux program, started in its own virtual display.
    Native {
        /// Program and arguments; the program is looked up on the host's `PATH`.
        command: Vec<String>,
        /// Whether the program may use the network (it runs without one by default).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        network: bool,
    },
}

impl RuntimeSpec {
    /// The runtime kind a host must advertise to run this spec.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeSpec::Builtin { .. } => "builtin",
            RuntimeSpec::Libretro { .. } => "libretro",
            RuntimeSpec::Native { .. } => "native",
        }
    }

    /// Frames of run-ahead the game asks for (only emulated games can).
    pub fn run_ahead(&self) -> u8 {
        match self {
            RuntimeSpec::Libretro { run_ahead, .. } => *run_ahead,
            _ => 0,
        }
    }

    /// Parses and validates a stored spec.
    pub fn from_json(json: &str) -> Result<RuntimeSpec, String> {
        let spec: RuntimeSpec = serde_json::from_str(json).map_err(|e| format!("runtime spec: {e}"))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks the spec's shape; the host checks that what it names exists.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            RuntimeSpec::Builtin { game } => check_name("game", game),
            RuntimeSpec::Libretro { core, content, options, run_ahead } => {
                if *run_ahead > MAX_RUN_AHEAD {
                    return Err(format!("run_ahead: 0 to {MAX_RUN_AHEAD} frames"));
                }
                check_name("core", core)?;
                check_relative_path(content)?;
                if options.len() > MAX_OPTIONS {
                    return Err(format!("at most {MAX_OPTIONS} core options"));
                }
                for (key, value) in options {
                    check_text("option name", key)?;
                    check_text("option value", value)?;
                }
                Ok(())
            }
            RuntimeSpec::Native { command, .. } => {
                if command.is_empty() || command.len() > MAX_NATIVE_ARGS {
                    return Err(format!("command: 1 to {MAX_NATIVE_ARGS} words"));
                }
                command.iter().try_for_each(|word| check_text("command", word))?;
                if command[0].is_empty() {
                    return Err("command: the program name is empty".into());
                }
                Ok(())
            }
        }
    }
}

/// What a host needs to start a session's game: the catalogue id (for display and
/// metrics), how to run it, and whose saves it reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GameLaunch {
    pub game: String,
    pub runtime: RuntimeSpec,
    /// `tenant/user` for a signed-in player: in-game saves (SRAM) persist under it.
    /// `None` (guests): saves last as long as the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_profile: Option<String>,
    /// The player's newest cloud copy of the game's in-game save (SRAM), which the host
    /// puts in place before the game starts; only with a `save_profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_save: Option<CloudSave>,
    /// A save state to start the game from, instead of its beginning: the player's own,
    /// or a moment someone captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_state: Option<CloudSave>,
    /// The players' microphone reaches the game (the platform allows it). Without it the
    /// host decodes no microphone and the game has no input device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub microphone: bool,
    /// The player may paste into the game's clipboard and copy from it (native programs;
    /// the platform allows it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clipboard: bool,
}

/// One version of a cloud save, as the control plane hands it to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSave {
    pub version: u64,
    /// SHA-256 of the bytes, lower-case hex: the host checks it before using them.
    pub sha256: String,
    /// The bytes, base64 (standard alphabet, padded).
    pub data: String,
}

/// Largest cloud save a launch may carry, in bytes before encoding.
pub const MAX_CLOUD_SAVE_BYTES: usize = 1 << 20;

impl CloudSave {
    pub fn new(version: u64, sha256: String, bytes: &[u8]) -> CloudSave {
        use base64::Engine;
        CloudSave { version, sha256, data: base64::engine::general_purpose::STANDARD.encode(bytes) }
    }

    /// The bytes, if the text decodes (the checksum is the receiver's to check).
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(&self.data).map_err(|e| format!("cloud save: {e}"))
    }
}

impl GameLaunch {
    /// A built-in game, without persistent saves.
    pub fn builtin(game: &str) -> GameLaunch {
        GameLaunch {
            game: game.into(),
            runtime: RuntimeSpec::Builtin { game: game.into() },
            save_profile: None,
            cloud_save: None,
            cloud_state: None,
            microphone: false,
            clipboard: false,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        check_name("game", &self.game)?;
        self.runtime.validate()?;
        if let Some(profile) = &self.save_profile {
            let parts: Vec<&str> = profile.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|part| check_name("save profile", part).is_err()) {
                return Err("save profile: tenant/user".into());
            }
        }
        for save in self.cloud_save.iter().chain(&self.cloud_state) {
            // A state to start from may come from someone else's moment; an in-game save
            // is always the player's own.
            if self.save_profile.is_none() && self.cloud_save.is_some() {
                return Err("cloud save: only for a player's save profile".into());
            }
            let hex = save.sha256.len() == 64 && save.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex || save.data.len() > MAX_CLOUD_SAVE_BYTES.div_ceil(3) * 4 {
                return Err(format!("cloud save: a SHA-256 in hex and at most {MAX_CLOUD_SAVE_BYTES} bytes"));
            }
        }
        Ok(())
    }
}

fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT || text.contains('\0') {
        return Err(format!("{what}: at most {MAX_TEXT} bytes, no NUL"));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if crate::id::is_id(name) { Ok(()) } else { Err(format!("{what}: {}", crate::id::ID_RULE)) }
}

/// A relative path that stays below the directory it is joined to.
/// Whether `c` may not appear in a name shown or logged: control characters (newlines
/// forge log lines) and the bidirectional controls that make a name read as another.
pub fn is_deceptive(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn check_relative_path(path: &str) -> Result<(), String> {
    check_text("content", path)?;
    if path.chars().any(is_deceptive) {
        return Err("content: no control or bidirectional-override characters".into());
    }
    let escapes = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if escapes {
        return Err("content: a relative path inside the content directory (no '..', no leading '/')".into());
    }
    Ok(())
}

/// Most frames of run-ahead a game may ask for.
pub const MAX_RUN_AHEAD: u8 = 3;

fn is_zero(n: &u8) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_paths_with_control_or_bidi_characters_are_refused() {
        for content in ["nes/a\nb.nes", "nes/\u{202e}sen.exe", "nes/a\u{2066}b.nes", "nes/\rgame.nes"] {
            let spec = RuntimeSpec::Libretro {
                core: "nestopia".into(),
                content: content.into(),
                options: Default::default(),
                run_ahead: 0,
            };
            assert!(spec.validate().is_err(), "{content:?}");
        }
    }

    use super::*;

    #[test]
    fn specs_round_trip_and_name_their_kind() {
        for json in [
            r#"{"kind":"builtin","game":"neon-cycles"}"#,
            r#"{"kind":"libretro","core":"nestopia","content":"nes/colour-pad.nes","options":{"nestopia_palette":"raw"}}"#,
            r#"{"kind":"libretro","core":"nestopia","content":"nes/colour-pad.nes","run_ahead":2}"#,
            r#"{"kind":"native","command":["xterm","-geometry","80x24"]}"#,
        ] {
            let spec = RuntimeSpec::from_json(json).unwrap();
            assert_eq!(spec.to_json(), json);
            assert!(json.contains(spec.kind()));
        }
    }

    #[test]
    fn specs_that_reach_outside_the_host_directories_are_refused() {
        for json in [
            r#"{"kind":"libretro","core":"../../bin/sh","content":"a.nes"}"#,
            r#"{"kind":"libretro","core":"nestopia","content":"../secret"}"#,
            r#"{"kind":"libretro","core":"nestopia","content":"/etc/passwd"}"#,
            r#"{"kind":"libretro","core":"nestopia","content":"nes//a.nes"}"#,
            r#"{"kind":"libretro","core":"nestopia","content":""}"#,
            r#"{"kind":"native","command":[]}"#,
            r#"{"kind":"native","command":[""]}"#,
            r#"{"kind":"builtin","game":"neon-cycles","extra":1}"#,
            r#"{"kind":"flash","swf":"x"}"#,
            r#"{"kind":"libretro","core":"nestopia","content":"a.nes","run_ahead":4}"#,
            r#"not json"#,
        ] {
            assert!(RuntimeSpec::from_json(json).is_err(), "{json} must be refused");
        }
    }
}
