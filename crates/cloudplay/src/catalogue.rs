//! The operator's game catalogue file (TOML): the games the default tenant offers beside
//! the built-in ones, each with the runtime that runs it. The control plane stores the same
//! runtime specs; hosts resolve cores and content in their own directories.
//!
//! ```toml
//! [[game]]
//! id = "colour-pad"
//! title = "Colour Pad"
//! runtime = { kind = "libretro", core = "nestopia", content = "nes/colour-pad.nes" }
//!
//! [[game]]
//! id = "terminal"
//! title = "Terminal"
//! runtime = { kind = "native", command = ["xterm", "-maximized"] }
//! ```

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, bail};
use cloudplay_control::store::CatalogueGame;
use cloudplay_game::Catalogue;
use cloudplay_proto::runtime::RuntimeSpec;
use cloudplay_runtime::Runtimes;
use serde::Deserialize;
use tracing::warn;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    #[serde(default)]
    game: Vec<GameEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GameEntry {
    id: String,
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    art_url: String,
    #[serde(default = "one")]
    max_players: u8,
    #[serde(default)]
    controls: Vec<String>,
    #[serde(default)]
    required_tier: Option<String>,
    /// Title key shared with other tenants' entries of the same game, for cross-play.
    #[serde(default)]
    crossplay_key: Option<String>,
    runtime: RuntimeSpec,
}

fn one() -> u8 {
    1
}

/// How emulated games are played, unless the catalogue says otherwise.
const RETROPAD_CONTROLS: [&str; 4] = [
    "Arrows: D-pad · X: A · Z: B · S: X · A: Y",
    "Enter: Start · Right Shift: Select · Q / W: L / R",
    "Gamepad: by position, as on the console",
    "Touch: the on-screen pad",
];

/// The built-in games as catalogue entries.
pub fn builtin_games() -> Vec<CatalogueGame> {
    Catalogue::builtin()
        .games()
        .map(|game| CatalogueGame {
            id: game.id.clone(),
            title: game.title.clone(),
            description: game.description.clone(),
            art_url: String::new(),
            runtime: RuntimeSpec::Builtin { game: game.id.clone() }.to_json(),
            required_tier: None,
            max_players: game.max_players,
            controls: game.controls.clone(),
            // The same built-in game on every tenant: its id is its title key.
            crossplay_key: Some(game.id.clone()),
        })
        .collect()
}

/// Parses a catalogue file; any mistake is an error naming the entry.
pub fn parse(text: &str) -> anyhow::Result<Vec<CatalogueGame>> {
    let file: CatalogueFile = toml::from_str(text)?;
    let mut seen = HashSet::new();
    let mut games = Vec::new();
    for (index, entry) in file.game.into_iter().enumerate() {
        let name = format!("game #{} ({:?})", index + 1, entry.id);
        if !cloudplay_proto::id::is_id(&entry.id) {
            bail!("{name}: ids are {}", cloudplay_proto::id::ID_RULE);
        }
        if !seen.insert(entry.id.clone()) {
            bail!("{name}: the id is used twice");
        }
        if entry.title.trim().is_empty() {
            bail!("{name}: a title is required");
        }
        if !(1..=cloudplay_game::MAX_PLAYERS).contains(&entry.max_players) {
            bail!("{name}: max_players must be 1 to {}", cloudplay_game::MAX_PLAYERS);
        }
        entry.runtime.validate().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        if let Some(key) = &entry.crossplay_key
            && !cloudplay_proto::id::is_id(key)
        {
            bail!("{name}: crossplay_key: title keys are {}", cloudplay_proto::id::ID_RULE);
        }
        let controls = match (&entry.runtime, entry.controls.is_empty()) {
            (RuntimeSpec::Libretro { .. }, true) => RETROPAD_CONTROLS.iter().map(|s| s.to_string()).collect(),
            _ => entry.controls,
        };
        games.push(CatalogueGame {
            id: entry.id,
            title: entry.title,
            description: entry.description,
            art_url: entry.art_url,
            runtime: entry.runtime.to_json(),
            required_tier: entry.required_tier,
            max_players: entry.max_players,
            controls,
            crossplay_key: entry.crossplay_key,
        });
    }
    Ok(games)
}

/// The built-in games followed by those of the catalogue file, if one is configured.
pub fn load(path: Option<&Path>) -> anyhow::Result<Vec<CatalogueGame>> {
    let mut games = builtin_games();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let extra = parse(&text).with_context(|| format!("in the catalogue {}", path.display()))?;
        games.retain(|builtin| extra.iter().all(|game| game.id != builtin.id));
        games.extend(extra);
    }
    Ok(games)
}

/// Warns about entries this host could not start (core, content or program missing), so
/// the operator hears of it at startup rather than from players.
pub fn check_runnable(games: &[CatalogueGame], runtimes: &Runtimes) {
    for game in games {
        let Ok(spec) = RuntimeSpec::from_json(&game.runtime) else { continue };
        if let Some(error) = runtimes.missing(&spec) {
            warn!(game = %game.id, %error, "this host cannot start the game");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalogue_file_names_runtimes() {
        let games = parse(
            r#"
            [[game]]
            id = "colour-pad"
            title = "Colour Pad"
            runtime = { kind = "libretro", core = "nestopia", content = "nes/colour-pad.nes" }

            [[game]]
            id = "terminal"
            title = "Terminal"
            max_players = 1
            controls = ["Type"]
            runtime = { kind = "native", command = ["xterm"] }
            "#,
        )
        .unwrap();
        assert_eq!(games.len(), 2);
        assert_eq!(
            games[0].runtime,
            r#"{"kind":"libretro","core":"nestopia","content":"nes/colour-pad.nes"}"#
        );
        assert_eq!(games[0].controls.len(), RETROPAD_CONTROLS.len());
        assert_eq!(games[1].controls, ["Type"]);
    }

    #[test]
    fn mistakes_name_the_entry() {
        for (text, expected) in [
            (
                "[[game]]\nid = \"a\"\ntitle = \"A\"\nruntime = { kind = \"libretro\", core = \"x\", content = \"../etc/passwd\" }",
                "game #1 (\"a\")",
            ),
            (
                "[[game]]\nid = \"a\"\ntitle = \"A\"\nruntime = { kind = \"builtin\", game = \"x\" }\n[[game]]\nid = \"a\"\ntitle = \"B\"\nruntime = { kind = \"builtin\", game = \"x\" }",
                "used twice",
            ),
            (
                "[[game]]\nid = \"a b\"\ntitle = \"A\"\nruntime = { kind = \"builtin\", game = \"x\" }",
                "ids are",
            ),
            ("[[game]]\nid = \"a\"\ntitle = \"A\"\nruntime = { kind = \"dos\" }", "unknown variant"),
            ("[[games]]\nid = \"a\"", "unknown field"),
        ] {
            let error = format!("{:#}", parse(text).unwrap_err());
            assert!(error.contains(expected), "{error} should mention {expected}");
        }
    }
}
