//! What cloudplay accepts as an id — of a game, a session, a host, a region, a core — in
//! one place: short, ASCII, and safe in a URL path, a file name and a log line.

/// The most characters an id has.
pub const MAX_ID_LEN: usize = 64;

/// 1 to 64 ASCII letters, digits, `-` and `_`.
pub fn is_id(s: &str) -> bool {
    is_id_with(s, "-_")
}

/// An id of the fleet (host, region, runtime), which may also hold `.` (`eu-west.2`).
pub fn is_fleet_id(s: &str) -> bool {
    is_id_with(s, "-_.")
}

fn is_id_with(s: &str, punctuation: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars().all(|c| c.is_ascii_alphanumeric() || punctuation.contains(c))
}

/// What [`is_id`] accepts, for error messages.
pub const ID_RULE: &str = "1 to 64 letters, digits, '-' or '_'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_plain_ascii() {
        for good in ["neon-cycles", "a", "A_1-b", &"x".repeat(64)] {
            assert!(is_id(good), "{good}");
        }
        for bad in ["", "a b", "a/b", "../x", "é", "a\n", "a.b", &"x".repeat(65)] {
            assert!(!is_id(bad), "{bad:?}");
        }
        assert!(is_fleet_id("eu-west.2") && !is_fleet_id("eu west"));
    }
}
