//! The X clipboard of a session's display, for the player: text the player pastes becomes
//! the display's clipboard (this side owns the `CLIPBOARD` selection and answers the
//! game's requests for it), and the game's clipboard can be read back. A thread of its own
//! with its own connection, so a slow or hostile program never holds up the session: every
//! answer it waits for has a deadline, and what it reads is bounded ([`MAX_CLIPBOARD`],
//! no incremental transfers) and decoded as UTF-8 (lossily).

use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use tracing::debug;
use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    Atom, AtomEnum, ConnectionExt as _, CreateWindowAux, EventMask, PropMode, SELECTION_NOTIFY_EVENT,
    SelectionNotifyEvent, Time, Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

/// The most text that crosses, either way (bytes of UTF-8).
pub const MAX_CLIPBOARD: usize = 64 * 1024;
/// How long the game has to hand over its clipboard.
const READ_DEADLINE: Duration = Duration::from_millis(500);
/// How often the thread looks at its commands while it waits for the display.
const POLL: Duration = Duration::from_millis(10);

enum Command {
    Set(String),
    /// Read it, for the ask numbered so.
    Read(u64),
}

/// The clipboard thread's handle: commands in, the game's text out.
pub(super) struct Clipboard {
    commands: Sender<Command>,
    read: Receiver<(u64, String)>,
    /// The latest ask: only its answer is taken (an earlier one may come late).
    asked: std::cell::Cell<u64>,
}

struct Atoms {
    clipboard: Atom,
    utf8: Atom,
    targets: Atom,
    text: Atom,
    property: Atom,
    incr: Atom,
}

impl Clipboard {
    /// Starts the thread on `connection` (its own, authorised to the display).
    pub(super) fn start(connection: RustConnection, root: Window) -> Option<Clipboard> {
        let (commands, incoming) = channel();
        let (answers, read) = channel();
        std::thread::Builder::new()
            .name("clipboard".into())
            .spawn(move || {
                if let Err(e) = serve(&connection, root, &incoming, &answers) {
                    debug!(error = %e, "the clipboard's connection ended");
                }
            })
            .ok()?;
        Some(Clipboard { commands, read, asked: std::cell::Cell::new(0) })
    }

    /// Makes `text` the display's clipboard (cut to [`MAX_CLIPBOARD`] at a character).
    pub(super) fn set(&self, mut text: String) {
        if text.len() > MAX_CLIPBOARD {
            let mut end = MAX_CLIPBOARD;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let _ = self.commands.send(Command::Set(text));
    }

    /// Asks for the game's clipboard; it comes from [`Clipboard::take_read`].
    pub(super) fn ask(&self) {
        self.asked.set(self.asked.get() + 1);
        let _ = self.commands.send(Command::Read(self.asked.get()));
    }

    /// The game's clipboard as the latest ask found it, once read (empty when it had none
    /// or did not answer); answers to earlier asks are dropped.
    pub(super) fn take_read(&self) -> Option<String> {
        self.read.try_iter().filter(|(ask, _)| *ask == self.asked.get()).last().map(|(_, text)| text)
    }
}

fn intern(connection: &RustConnection, name: &[u8]) -> Result<Atom, Box<dyn std::error::Error>> {
    Ok(connection.intern_atom(false, name)?.reply()?.atom)
}

fn serve(
    connection: &RustConnection,
    root: Window,
    commands: &Receiver<Command>,
    answers: &Sender<(u64, String)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let atoms = Atoms {
        clipboard: intern(connection, b"CLIPBOARD")?,
        utf8: intern(connection, b"UTF8_STRING")?,
        targets: intern(connection, b"TARGETS")?,
        text: intern(connection, b"TEXT")?,
        property: intern(connection, b"CLOUDPLAY_CLIPBOARD")?,
        incr: intern(connection, b"INCR")?,
    };
    let window = connection.generate_id()?;
    let aux = CreateWindowAux::new().event_mask(EventMask::PROPERTY_CHANGE);
    connection.create_window(0, window, root, 0, 0, 1, 1, 0, WindowClass::INPUT_ONLY, 0, &aux)?;
    connection.flush()?;
    // What this side offers while it owns the selection.
    let mut offered: Option<String> = None;
    // A read under way: its deadline and the ask it answers.
    let mut reading: Option<(Instant, u64)> = None;
    loop {
        while let Some(event) = connection.poll_for_event()? {
            match event {
                Event::SelectionRequest(request) => {
                    let text = offered.as_deref().unwrap_or_default();
                    let mut property = request.property;
                    if request.target == atoms.targets {
                        let targets = [atoms.targets, atoms.utf8, atoms.text, AtomEnum::STRING.into()];
                        connection.change_property32(
                            PropMode::REPLACE,
                            request.requestor,
                            property,
                            AtomEnum::ATOM,
                            &targets,
                        )?;
                    } else if [atoms.utf8, atoms.text, AtomEnum::STRING.into()].contains(&request.target)
                        && offered.is_some()
                    {
                        connection.change_property8(
                            PropMode::REPLACE,
                            request.requestor,
                            property,
                            request.target,
                            text.as_bytes(),
                        )?;
                    } else {
                        property = x11rb::NONE;
                    }
                    let notify = SelectionNotifyEvent {
                        response_type: SELECTION_NOTIFY_EVENT,
                        sequence: 0,
                        time: request.time,
                        requestor: request.requestor,
                        selection: request.selection,
                        target: request.target,
                        property,
                    };
                    connection.send_event(false, request.requestor, EventMask::NO_EVENT, notify)?;
                    connection.flush()?;
                }
                Event::SelectionClear(_) => offered = None,
                Event::SelectionNotify(notify) => {
                    let Some((_, ask)) = reading.take() else { continue };
                    let text = if notify.property == x11rb::NONE {
                        String::new()
                    } else {
                        take_property(connection, window, &atoms)?
                    };
                    let _ = answers.send((ask, text));
                }
                _ => {}
            }
        }
        if let Some((deadline, ask)) = reading
            && Instant::now() >= deadline
        {
            reading = None;
            let _ = answers.send((ask, String::new()));
        }
        match commands.recv_timeout(POLL) {
            Ok(Command::Set(text)) => {
                offered = Some(text);
                connection.set_selection_owner(window, atoms.clipboard, Time::CURRENT_TIME)?;
                connection.flush()?;
            }
            Ok(Command::Read(ask)) if offered.is_some() => {
                // This side owns it: the game's clipboard is what the player pasted.
                let _ = answers.send((ask, offered.clone().unwrap_or_default()));
            }
            Ok(Command::Read(ask)) => {
                connection.convert_selection(
                    window,
                    atoms.clipboard,
                    atoms.utf8,
                    atoms.property,
                    Time::CURRENT_TIME,
                )?;
                connection.flush()?;
                reading = Some((Instant::now() + READ_DEADLINE, ask));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// The text the game put on this side's window: at most [`MAX_CLIPBOARD`] bytes, in one
/// piece (an incremental transfer is refused), as UTF-8.
fn take_property(
    connection: &RustConnection,
    window: Window,
    atoms: &Atoms,
) -> Result<String, Box<dyn std::error::Error>> {
    let words = (MAX_CLIPBOARD / 4) as u32;
    let reply = connection.get_property(true, window, atoms.property, AtomEnum::ANY, 0, words)?.reply()?;
    if reply.type_ == atoms.incr || reply.format != 8 || reply.bytes_after > 0 {
        debug!("the game's clipboard is too large or not text: refused");
        return Ok(String::new());
    }
    Ok(String::from_utf8_lossy(&reply.value).into_owned())
}
