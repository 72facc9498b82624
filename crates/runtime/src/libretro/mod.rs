//! A libretro frontend: loads a core (`*_libretro.so`), feeds it content and input, and
//! turns its frames and audio into a [`Game`] the session loop can stream.
//!
//! libretro callbacks carry no user data, so the frontend state of the core being called
//! sits in a thread-local for the duration of each call into the core; every call into the
//! core goes through [`LibretroGame::call`]. Cores keep global state, so each session loads
//! its own copy of the core's file: two sessions of one core never share an instance.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{CStr, CString, c_char, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cloudplay_game::{
    AUDIO_CHANNELS, AUDIO_FRAMES_PER_TICK, Frame, Game, GameStatus, MAX_PLAYERS, PlayerInput, StateError,
    TICK_RATE,
};
use cloudplay_proto::worker::MAX_SAVE_RAM;
use libloading::Library;
use tracing::{debug, info, warn};

use crate::RuntimeError;
use crate::resample::Resampler;
use crate::retropad::RetroPad;
use crate::scale::scale_into;

mod abi;
use abi::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PixelFormat {
    Rgb1555,
    Xrgb8888,
    Rgb565,
}

/// Largest picture a core may hand over; beyond this a frame is ignored as corrupt.
const MAX_CORE_DIMENSION: c_uint = 4096;
/// Audio kept for the session beyond one tick: more would only add latency.
const MAX_BUFFERED_AUDIO_TICKS: usize = 4;
/// Content read into memory at most (cores that want a path get the path instead).
const MAX_CONTENT_BYTES: u64 = 512 * 1024 * 1024;

/// Where the host keeps the in-game save (SRAM) of `content` in a player's save directory
/// `dir` (a directory no game code can write).
pub fn sram_file(dir: &Path, content: &Path) -> PathBuf {
    let stem = content.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!("{stem}.srm"))
}

/// What the callbacks of one core write into; lives in a `Box` so its address is stable.
struct Frontend {
    pixel_format: PixelFormat,
    /// The core's last frame as RGBA, `width`×`height`.
    picture: Vec<u8>,
    width: u32,
    height: u32,
    frames_produced: u64,
    /// When the newest frame arrived from the core.
    produced_at: Option<Instant>,
    /// Stereo samples at the core's rate, since the last tick.
    audio: Vec<i16>,
    pads: [RetroPad; MAX_PLAYERS as usize],
    /// Core options: the core's defaults, overridden by the catalogue's.
    variables: BTreeMap<String, String>,
    overrides: BTreeMap<String, String>,
    /// C strings handed to the core; they must outlive the call that returned them.
    handed_out: HashMap<String, CString>,
    variables_changed: bool,
    system_dir: CString,
    save_dir: CString,
    av: SystemAvInfo,
    shutdown_requested: bool,
    /// Each port's motors (strong, weak) as the core set them, and as last reported.
    rumble: [[u16; 2]; MAX_PLAYERS as usize],
    rumble_reported: [[u16; 2]; MAX_PLAYERS as usize],
}

thread_local! {
    static CURRENT: Cell<*mut Frontend> = const { Cell::new(std::ptr::null_mut()) };
}

/// Runs `f` with the frontend of the core being called, if a call is in progress.
fn with_frontend<R>(default: R, f: impl FnOnce(&mut Frontend) -> R) -> R {
    let pointer = CURRENT.with(Cell::get);
    if pointer.is_null() {
        return default;
    }
    // SAFETY: `LibretroGame::call` sets the pointer to its boxed frontend for exactly the
    // duration of a call into the core on this thread; callbacks run inside that call,
    // and nothing else holds a reference to the frontend meanwhile.
    f(unsafe { &mut *pointer })
}

/// The core's rumble interface: a port's strong (0) or weak (1) motor.
unsafe extern "C" fn set_rumble_state(port: c_uint, effect: c_uint, strength: u16) -> bool {
    with_frontend(false, |frontend| {
        match frontend.rumble.get_mut(port as usize).and_then(|motors| motors.get_mut(effect as usize)) {
            Some(motor) => {
                *motor = strength;
                true
            }
            None => false,
        }
    })
}

unsafe extern "C" fn environment(command: c_uint, data: *mut c_void) -> bool {
    let command = command & !ENVIRONMENT_EXPERIMENTAL;
    with_frontend(false, |frontend| {
        // SAFETY: for each command the libretro API fixes what `data` points to; each arm
        // reads or writes exactly that type, after a null check.
        unsafe { frontend.environment(command, data) }
    })
}

impl Frontend {
    unsafe fn environment(&mut self, command: c_uint, data: *mut c_void) -> bool {
        if data.is_null() && !matches!(command, env::SHUTDOWN) {
            return matches!(command, env::SET_PERFORMANCE_LEVEL);
        }
        unsafe {
            match command {
                env::GET_CAN_DUPE | env::GET_INPUT_BITMASKS => {
                    *(data as *mut bool) = true;
                    true
                }
                env::GET_RUMBLE_INTERFACE => {
                    *(data as *mut RumbleInterface) = RumbleInterface { set_rumble_state };
                    true
                }
                env::GET_OVERSCAN => {
                    *(data as *mut bool) = false;
                    true
                }
                env::SHUTDOWN => {
                    self.shutdown_requested = true;
                    true
                }
                env::GET_SYSTEM_DIRECTORY => {
                    *(data as *mut *const c_char) = self.system_dir.as_ptr();
                    true
                }
                env::GET_SAVE_DIRECTORY => {
                    *(data as *mut *const c_char) = self.save_dir.as_ptr();
                    true
                }
                env::SET_PIXEL_FORMAT => {
                    let format = match *(data as *const c_uint) {
                        0 => PixelFormat::Rgb1555,
                        1 => PixelFormat::Xrgb8888,
                        2 => PixelFormat::Rgb565,
                        _ => return false,
                    };
                    self.pixel_format = format;
                    true
                }
                env::SET_VARIABLES => {
                    let mut entry = data as *const Variable;
                    while !(*entry).key.is_null() {
                        let key = CStr::from_ptr((*entry).key).to_string_lossy().into_owned();
                        let value = if (*entry).value.is_null() {
                            String::new()
                        } else {
                            CStr::from_ptr((*entry).value).to_string_lossy().into_owned()
                        };
                        // "Description; default|other|…": the first choice is the default.
                        let choices = value.split_once("; ").map_or("", |(_, choices)| choices);
                        let default = choices.split('|').next().unwrap_or("").to_string();
                        self.variables.insert(key, default);
                        entry = entry.add(1);
                    }
                    for (key, value) in &self.overrides {
                        self.variables.insert(key.clone(), value.clone());
                    }
                    true
                }
                env::GET_VARIABLE => {
                    let variable = data as *mut Variable;
                    if (*variable).key.is_null() {
                        return false;
                    }
                    let key = CStr::from_ptr((*variable).key).to_string_lossy();
                    let Some(value) = self.variables.get(key.as_ref()) else {
                        (*variable).value = std::ptr::null();
                        return false;
                    };
                    let handed = self
                        .handed_out
                        .entry(key.into_owned())
                        .or_insert_with(|| CString::new(value.as_str()).unwrap_or_default());
                    (*variable).value = handed.as_ptr();
                    true
                }
                env::GET_VARIABLE_UPDATE => {
                    *(data as *mut bool) = std::mem::take(&mut self.variables_changed);
                    true
                }
                env::GET_CORE_OPTIONS_VERSION => {
                    // Version 0: the core falls back to SET_VARIABLES, which is all we read.
                    *(data as *mut c_uint) = 0;
                    true
                }
                env::GET_LANGUAGE => {
                    *(data as *mut c_uint) = 0; // English
                    true
                }
                env::GET_AUDIO_VIDEO_ENABLE => {
                    *(data as *mut i32) = 0b11;
                    true
                }
                env::SET_GEOMETRY => {
                    self.av.geometry = *(data as *const GameGeometry);
                    true
                }
                env::SET_SYSTEM_AV_INFO => {
                    self.av = *(data as *const SystemAvInfo);
                    true
                }
                env::SET_PERFORMANCE_LEVEL
                | env::SET_INPUT_DESCRIPTORS
                | env::SET_SUPPORT_NO_GAME
                | env::SET_SUBSYSTEM_INFO
                | env::SET_CONTROLLER_INFO
                | env::SET_MEMORY_MAPS
                | env::SET_SERIALIZATION_QUIRKS => true,
                other => {
                    debug!(command = other, "libretro environment call not supported");
                    false
                }
            }
        }
    }

    fn take_frame(&mut self, data: *const c_void, width: c_uint, height: c_uint, pitch: usize) {
        if data.is_null() {
            return; // a duplicate of the last frame (GET_CAN_DUPE)
        }
        let bytes_per_pixel = if self.pixel_format == PixelFormat::Xrgb8888 { 4 } else { 2 };
        if width == 0
            || height == 0
            || width > MAX_CORE_DIMENSION
            || height > MAX_CORE_DIMENSION
            || pitch < width as usize * bytes_per_pixel
        {
            return;
        }
        let (w, h) = (width as usize, height as usize);
        self.picture.resize(w * h * 4, 0);
        // SAFETY: the core guarantees `height` rows of `pitch` bytes at `data` for this call.
        let source =
            unsafe { std::slice::from_raw_parts(data as *const u8, pitch * (h - 1) + w * bytes_per_pixel) };
        for y in 0..h {
            let row = &source[y * pitch..y * pitch + w * bytes_per_pixel];
            let out = &mut self.picture[y * w * 4..(y + 1) * w * 4];
            match self.pixel_format {
                PixelFormat::Xrgb8888 => {
                    for (pixel, rgba) in row.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
                        rgba.copy_from_slice(&[pixel[2], pixel[1], pixel[0], 255]);
                    }
                }
                PixelFormat::Rgb565 => {
                    for (pixel, rgba) in row.chunks_exact(2).zip(out.chunks_exact_mut(4)) {
                        let p = u16::from_le_bytes([pixel[0], pixel[1]]);
                        let (r, g, b) = ((p >> 11) & 0x1F, (p >> 5) & 0x3F, p & 0x1F);
                        rgba.copy_from_slice(&[expand5(r), ((g << 2) | (g >> 4)) as u8, expand5(b), 255]);
                    }
                }
                PixelFormat::Rgb1555 => {
                    for (pixel, rgba) in row.chunks_exact(2).zip(out.chunks_exact_mut(4)) {
                        let p = u16::from_le_bytes([pixel[0], pixel[1]]);
                        let (r, g, b) = ((p >> 10) & 0x1F, (p >> 5) & 0x1F, p & 0x1F);
                        rgba.copy_from_slice(&[expand5(r), expand5(g), expand5(b), 255]);
                    }
                }
            }
        }
        self.width = width;
        self.height = height;
        self.frames_produced += 1;
        self.produced_at = Some(Instant::now());
    }

    fn input_state(&self, port: c_uint, device: c_uint, index: c_uint, id: c_uint) -> i16 {
        let Some(pad) = self.pads.get(port as usize) else { return 0 };
        match device & 0xFF {
            DEVICE_JOYPAD if id == DEVICE_ID_JOYPAD_MASK => pad.buttons() as i16,
            DEVICE_JOYPAD if id < 16 => ((pad.buttons() >> id) & 1) as i16,
            DEVICE_ANALOG if index < 2 && id < 2 => pad.analog[index as usize][id as usize],
            _ => 0,
        }
    }
}

fn expand5(v: u16) -> u8 {
    ((v << 3) | (v >> 2)) as u8
}

unsafe extern "C" fn video_refresh(data: *const c_void, width: c_uint, height: c_uint, pitch: usize) {
    with_frontend((), |frontend| frontend.take_frame(data, width, height, pitch));
}

unsafe extern "C" fn audio_sample(left: i16, right: i16) {
    with_frontend((), |frontend| frontend.audio.extend_from_slice(&[left, right]));
}

unsafe extern "C" fn audio_sample_batch(data: *const i16, frames: usize) -> usize {
    if data.is_null() || frames > 1 << 20 {
        return 0;
    }
    with_frontend(0, |frontend| {
        // SAFETY: the core passes `frames` interleaved stereo frames at `data`.
        let samples = unsafe { std::slice::from_raw_parts(data, frames * 2) };
        frontend.audio.extend_from_slice(samples);
        frames
    })
}

unsafe extern "C" fn input_poll() {}

unsafe extern "C" fn input_state(port: c_uint, device: c_uint, index: c_uint, id: c_uint) -> i16 {
    with_frontend(0, |frontend| frontend.input_state(port, device, index, id))
}

/// Where a libretro game finds its core, content and directories.
pub struct LibretroSetup<'a> {
    pub core_path: &'a Path,
    pub content_path: &'a Path,
    pub options: &'a BTreeMap<String, String>,
    pub system_dir: &'a Path,
}

/// A libretro core running one piece of content.
pub struct LibretroGame {
    // Field order matters for Drop: the core is shut down in `drop`, then the library unloads.
    api: CoreApi,
    frontend: Box<Frontend>,
    core_name: String,
    /// Core runs owed at the core's own frame rate (ticks are 60 Hz).
    runs_owed: f64,
    runs_per_tick: f64,
    resampler: Resampler,
    audio_out: VecDeque<f32>,
    resampled: Vec<f32>,
    /// `retro_init` ran (so `retro_deinit` must), and `retro_load_game` succeeded (so
    /// `retro_unload_game` must).
    initialised: bool,
    loaded: bool,
    /// The core's save directory: private to this game and removed with it. What a player
    /// keeps is the in-game save, which leaves through [`Game::in_game_save`]; whatever
    /// else a core writes there is the session's alone.
    scratch: PathBuf,
    _library: Library,
}

// SAFETY: the core is only ever called from the thread that owns the game at the time
// (the session loop), never concurrently; its callbacks find their state through the
// thread-local set around each call.
unsafe impl Send for LibretroGame {}

static CORE_COPIES: AtomicU64 = AtomicU64::new(0);

/// Loads a private copy of the core, so sessions never share a core's global state.
fn load_private_copy(core_path: &Path) -> Result<Library, RuntimeError> {
    // An unpredictable name, created exclusively (O_EXCL, mode 0700): nobody else sharing
    // the temporary directory can put their own library where this one is loaded from.
    let nonce: u64 = rand::random();
    let copy = std::env::temp_dir().join(format!(
        "cloudplay-core-{}-{}-{nonce:016x}.so",
        std::process::id(),
        CORE_COPIES.fetch_add(1, Ordering::Relaxed)
    ));
    let copied = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut source = std::fs::File::open(core_path)?;
        let mut target = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o700).open(&copy)?;
        std::io::copy(&mut source, &mut target)
    })();
    copied.map_err(|e| RuntimeError::Io(format!("copying the core: {e}")))?;
    // SAFETY: loading a library runs its initialisers; cores come from the operator's
    // cores directory, which is trusted like the cloudplay binary itself.
    let library = unsafe { Library::new(&copy) };
    let _ = std::fs::remove_file(&copy); // the mapping stays valid after unlinking
    library.map_err(|e| RuntimeError::CoreInvalid(format!("{}: {e}", core_path.display())))
}

impl LibretroGame {
    pub fn load(setup: LibretroSetup<'_>) -> Result<LibretroGame, RuntimeError> {
        if !setup.core_path.is_file() {
            return Err(RuntimeError::CoreMissing(setup.core_path.display().to_string()));
        }
        if !setup.content_path.is_file() {
            return Err(RuntimeError::ContentMissing(setup.content_path.display().to_string()));
        }
        let library = load_private_copy(setup.core_path)?;
        let api = CoreApi::resolve(&library)
            .map_err(|e| RuntimeError::CoreInvalid(format!("{}: {e}", setup.core_path.display())))?;
        // SAFETY: a resolved libretro entry point with no arguments.
        let version = unsafe { (api.api_version)() };
        if version != RETRO_API_VERSION {
            return Err(RuntimeError::CoreInvalid(format!("libretro API version {version}, expected 1")));
        }
        let c_path = |path: &Path| CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // A core still writes somewhere: a directory of this session's own, which goes with
        // it, never a place shared with other sessions or read by the host.
        let scratch =
            private_scratch_dir().map_err(|e| RuntimeError::Io(format!("scratch directory: {e}")))?;
        let save_dir = c_path(&scratch);
        let frontend = Box::new(Frontend {
            pixel_format: PixelFormat::Rgb1555, // the libretro default
            picture: Vec::new(),
            width: 0,
            height: 0,
            frames_produced: 0,
            produced_at: None,
            audio: Vec::with_capacity(8192),
            pads: Default::default(),
            variables: BTreeMap::new(),
            overrides: setup.options.clone(),
            handed_out: HashMap::new(),
            variables_changed: false,
            system_dir: c_path(setup.system_dir),
            save_dir,
            av: SystemAvInfo::default(),
            shutdown_requested: false,
            rumble: Default::default(),
            rumble_reported: Default::default(),
        });
        let core_name =
            setup.core_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut game = LibretroGame {
            api,
            frontend,
            core_name,
            runs_owed: 0.0,
            runs_per_tick: 1.0,
            resampler: Resampler::new(48_000.0, 48_000.0),
            audio_out: VecDeque::new(),
            resampled: Vec::new(),
            initialised: false,
            loaded: false,
            scratch,
            _library: library,
        };
        game.start(&setup)?;
        Ok(game)
    }

    /// Runs `f` (a call into the core) with this game's frontend current on this thread.
    fn call<R>(&mut self, f: impl FnOnce(&CoreApi) -> R) -> R {
        let pointer: *mut Frontend = &mut *self.frontend;
        let previous = CURRENT.with(|current| current.replace(pointer));
        let result = f(&self.api);
        CURRENT.with(|current| current.set(previous));
        result
    }

    fn start(&mut self, setup: &LibretroSetup<'_>) -> Result<(), RuntimeError> {
        // SAFETY (for every call in this function): resolved libretro entry points, called
        // in the order the API prescribes, with pointers that outlive each call.
        self.call(|api| unsafe {
            (api.set_environment)(environment);
            (api.set_video_refresh)(video_refresh);
            (api.set_audio_sample)(audio_sample);
            (api.set_audio_sample_batch)(audio_sample_batch);
            (api.set_input_poll)(input_poll);
            (api.set_input_state)(input_state);
            (api.init)();
        });
        self.initialised = true;
        let mut info = SystemInfo {
            library_name: std::ptr::null(),
            library_version: std::ptr::null(),
            valid_extensions: std::ptr::null(),
            need_fullpath: false,
            block_extract: false,
        };
        self.call(|api| unsafe { (api.get_system_info)(&mut info) });
        let text = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        let (name, version) = (text(info.library_name), text(info.library_version));

        let content_path = CString::new(setup.content_path.as_os_str().as_encoded_bytes())
            .map_err(|_| RuntimeError::ContentMissing("content path contains NUL".into()))?;
        let data = if info.need_fullpath {
            Vec::new()
        } else {
            let size = std::fs::metadata(setup.content_path).map(|m| m.len()).unwrap_or(0);
            if size > MAX_CONTENT_BYTES {
                return Err(RuntimeError::ContentRejected(format!(
                    "content is larger than {MAX_CONTENT_BYTES} bytes"
                )));
            }
            std::fs::read(setup.content_path)
                .map_err(|e| RuntimeError::Io(format!("reading content: {e}")))?
        };
        let game_info = GameInfo {
            path: content_path.as_ptr(),
            data: if data.is_empty() { std::ptr::null() } else { data.as_ptr().cast() },
            size: data.len(),
            meta: std::ptr::null(),
        };
        self.loaded = self.call(|api| unsafe { (api.load_game)(&game_info) });
        if !self.loaded {
            return Err(RuntimeError::ContentRejected(format!(
                "{name} {version} could not load {}",
                setup.content_path.display()
            )));
        }
        let mut av = SystemAvInfo::default();
        self.call(|api| unsafe { (api.get_system_av_info)(&mut av) });
        self.frontend.av = av;
        for port in 0..MAX_PLAYERS as c_uint {
            self.call(|api| unsafe { (api.set_controller_port_device)(port, DEVICE_JOYPAD) });
        }
        let fps = if av.timing.fps.is_finite() { av.timing.fps.clamp(1.0, 240.0) } else { 60.0 };
        let rate = if av.timing.sample_rate.is_finite() {
            av.timing.sample_rate.clamp(8_000.0, 192_000.0)
        } else {
            48_000.0
        };
        self.runs_per_tick = fps / TICK_RATE as f64;
        self.resampler = Resampler::new(rate, 48_000.0);

        info!(core = %name, version = %version, fps, sample_rate = rate, width = av.geometry.base_width, height = av.geometry.base_height, "libretro content loaded");
        Ok(())
    }

    /// The core's save RAM as (pointer, length), if it has any.
    fn sram(&mut self) -> Option<(*mut u8, usize)> {
        let (data, size) = self.call(|api| unsafe {
            ((api.get_memory_data)(MEMORY_SAVE_RAM), (api.get_memory_size)(MEMORY_SAVE_RAM))
        });
        (!data.is_null() && size > 0 && size <= MAX_SAVE_RAM).then_some((data.cast(), size))
    }

    /// Frames the core has produced so far.
    pub fn frames_produced(&self) -> u64 {
        self.frontend.frames_produced
    }

    /// The display aspect ratio (width / height) the core asks for.
    pub fn aspect_ratio(&self) -> f32 {
        let geometry = self.frontend.av.geometry;
        if geometry.aspect_ratio > 0.0 {
            geometry.aspect_ratio
        } else {
            self.frontend.width as f32 / self.frontend.height.max(1) as f32
        }
    }

    /// The core's newest picture: RGBA, width, height.
    pub fn picture(&self) -> (&[u8], u32, u32) {
        (&self.frontend.picture, self.frontend.width, self.frontend.height)
    }
}

const STATE_MAGIC: &[u8; 4] = b"CPLR";
/// Largest save state taken (cores report their size; a broken one must not exhaust memory).
const MAX_STATE_BYTES: usize = 256 << 20;

impl Game for LibretroGame {
    fn step(&mut self, inputs: &[PlayerInput]) {
        for input in inputs {
            if let Some(pad) = self.frontend.pads.get_mut(input.player as usize) {
                pad.apply(&input.event);
            }
        }
        self.runs_owed += self.runs_per_tick;
        let mut runs = 0;
        while self.runs_owed >= 1.0 && runs < 2 {
            self.call(|api| unsafe { (api.run)() });
            self.runs_owed -= 1.0;
            runs += 1;
        }
        self.runs_owed = self.runs_owed.min(1.0);
        let audio = std::mem::take(&mut self.frontend.audio);
        self.resampled.clear();
        self.resampler.process(&audio, &mut self.resampled);
        self.frontend.audio = audio;
        self.frontend.audio.clear();
        self.audio_out.extend(self.resampled.iter());
        let cap = AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS * MAX_BUFFERED_AUDIO_TICKS;
        if self.audio_out.len() > cap {
            let excess = self.audio_out.len() - cap;
            self.audio_out.drain(..excess);
        }
    }

    fn rumble(&mut self) -> Option<[[u16; 2]; MAX_PLAYERS as usize]> {
        let frontend = &mut self.frontend;
        (frontend.rumble != frontend.rumble_reported).then(|| {
            frontend.rumble_reported = frontend.rumble;
            frontend.rumble
        })
    }

    fn render(&self, frame: &mut Frame) {
        let (picture, width, height) = self.picture();
        scale_into(picture, width, height, self.aspect_ratio(), frame);
    }

    fn mix_audio(&mut self, out: &mut [f32]) {
        let available = self.audio_out.len().min(out.len());
        for (slot, sample) in out.iter_mut().zip(self.audio_out.drain(..available)) {
            *slot = sample;
        }
        out[available..].fill(0.0);
    }

    fn save_state(&self) -> Vec<u8> {
        // `save_state` takes `&self`, but the core's serialise is a call like any other:
        // the frontend pointer is only read by callbacks, which serialise does not make.
        let size = unsafe { (self.api.serialize_size)() };
        if size > MAX_STATE_BYTES {
            warn!(core = %self.core_name, size, "save state too large; not saved");
            return Vec::new();
        }
        let mut out = Vec::with_capacity(size + 8);
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&(size as u32).to_le_bytes());
        out.resize(8 + size, 0);
        let ok = size > 0 && unsafe { (self.api.serialize)(out[8..].as_mut_ptr().cast(), size) };
        if ok { out } else { Vec::new() }
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        if bytes.len() < 8 || &bytes[..4] != STATE_MAGIC {
            return Err(StateError::WrongFormat);
        }
        let size = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        if bytes.len() != 8 + size {
            return Err(StateError::Corrupt);
        }
        let mut expected = self.call(|api| unsafe { (api.serialize_size)() });
        if size != expected {
            // Some cores (nestopia) size their state only once they have run a frame, as
            // when a session starts from a state: run one (the state replaces what it did)
            // and ask again.
            self.call(|api| unsafe { (api.run)() });
            expected = self.call(|api| unsafe { (api.serialize_size)() });
        }
        if size != expected {
            return Err(StateError::WrongFormat);
        }
        let ok = self.call(|api| unsafe { (api.unserialize)(bytes[8..].as_ptr().cast(), size) });
        if ok { Ok(()) } else { Err(StateError::Corrupt) }
    }

    fn in_game_save(&mut self) -> Option<Vec<u8>> {
        let (data, size) = self.sram()?;
        // SAFETY: the core owns `size` bytes of save RAM at `data` while the game is
        // loaded; only read here.
        Some(unsafe { std::slice::from_raw_parts(data, size) }.to_vec())
    }

    fn restore_in_game_save(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let (data, size) = self.sram().ok_or(StateError::WrongFormat)?;
        if bytes.len() > size {
            return Err(StateError::WrongFormat);
        }
        // SAFETY: as in `in_game_save`; the core reads its save RAM only inside its calls.
        let sram = unsafe { std::slice::from_raw_parts_mut(data, size) };
        sram[..bytes.len()].copy_from_slice(bytes);
        info!(core = %self.core_name, bytes = bytes.len(), "in-game save restored");
        Ok(())
    }

    fn frame_produced_at(&self) -> Option<Instant> {
        self.frontend.produced_at
    }

    fn status(&mut self) -> GameStatus {
        if self.frontend.shutdown_requested {
            GameStatus::Exited(format!("{} shut down", self.core_name))
        } else {
            GameStatus::Running
        }
    }
}

impl Drop for LibretroGame {
    fn drop(&mut self) {
        if self.loaded {
            self.call(|api| unsafe { (api.unload_game)() });
        }
        if self.initialised {
            self.call(|api| unsafe { (api.deinit)() });
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// A fresh directory only this user can enter, under the temporary directory.
fn private_scratch_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("cloudplay-session-{:016x}", rand::random::<u64>()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_get_a_private_scratch_directory_each() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (private_scratch_dir().unwrap(), private_scratch_dir().unwrap());
        assert_ne!(a, b, "one per session");
        assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir(a).unwrap();
        std::fs::remove_dir(b).unwrap();
    }

    fn frontend(format: PixelFormat) -> Frontend {
        Frontend {
            pixel_format: format,
            picture: Vec::new(),
            width: 0,
            height: 0,
            frames_produced: 0,
            produced_at: None,
            audio: Vec::new(),
            pads: Default::default(),
            variables: BTreeMap::new(),
            overrides: BTreeMap::new(),
            handed_out: HashMap::new(),
            variables_changed: false,
            system_dir: CString::default(),
            save_dir: CString::default(),
            av: SystemAvInfo::default(),
            shutdown_requested: false,
            rumble: Default::default(),
            rumble_reported: Default::default(),
        }
    }

    #[test]
    fn every_pixel_format_becomes_rgba() {
        // Two pixels, pure red then pure blue, with a padded pitch.
        let cases: [(PixelFormat, Vec<u8>); 3] = [
            (PixelFormat::Xrgb8888, vec![0, 0, 255, 0, 255, 0, 0, 0, 9, 9, 9, 9]),
            (PixelFormat::Rgb565, vec![0x00, 0xF8, 0x1F, 0x00, 9, 9]),
            (PixelFormat::Rgb1555, vec![0x00, 0x7C, 0x1F, 0x00, 9, 9]),
        ];
        for (format, row) in cases {
            let mut f = frontend(format);
            f.take_frame(row.as_ptr().cast(), 2, 1, row.len());
            assert_eq!(f.picture, [255, 0, 0, 255, 0, 0, 255, 255], "{format:?}");
            assert_eq!((f.width, f.height, f.frames_produced), (2, 1, 1));
        }
    }

    #[test]
    fn bad_frames_from_a_core_are_ignored() {
        let mut f = frontend(PixelFormat::Xrgb8888);
        let row = [0u8; 8];
        f.take_frame(row.as_ptr().cast(), 2, 1, 4); // pitch shorter than a row
        f.take_frame(row.as_ptr().cast(), 0, 1, 8);
        f.take_frame(row.as_ptr().cast(), 5000, 1, 20_000);
        f.take_frame(std::ptr::null(), 2, 1, 8); // a duplicate: keep the last frame
        assert_eq!(f.frames_produced, 0);
        assert_eq!(f.input_state(7, DEVICE_JOYPAD, 0, 0), 0, "ports beyond four read as idle");
    }
}
